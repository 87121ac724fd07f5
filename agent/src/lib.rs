//! agent: `berthd` (the daemon) and `berth` (the command line).
