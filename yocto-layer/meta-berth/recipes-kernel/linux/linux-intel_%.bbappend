# Adds berth-jails.cfg to the kernel configuration only on opt-in: set
# BERTH_KERNEL_FRAGMENT = "1" or add "berth-jails" to DISTRO_FEATURES.
# nooelint: oelint.file.requirenotfound - the name is computed, empty without the opt-in
require ${@'berth-kernel.inc' if bb.utils.to_boolean(d.getVar('BERTH_KERNEL_FRAGMENT') or '0') or bb.utils.contains('DISTRO_FEATURES', 'berth-jails', True, False, d) else ''}
