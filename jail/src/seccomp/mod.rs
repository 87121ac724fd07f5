//! Seccomp filters of a jail, built in the library and shipped to
//! berth-init as classic BPF: the baseline by Berth's own emitter (short,
//! for a cheap install), a spec's profile with `seccompiler` (pure Rust,
//! no libseccomp).
//!
//! Two layers: the Berth baseline ([`BASELINE`], data with one comment per
//! entry saying who needs the refusal), always installed; and the spec's
//! own `linux.seccomp` profile when it has one. The kernel runs every
//! installed filter and the strictest answer wins (seccomp(2)), so the
//! spec can narrow but never widen the baseline.
//!
//! `syscalls` holds the per-architecture number tables.

mod syscalls;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::spec::{SeccompActionSpec, SeccompSpec};

/// One BPF instruction: `(code, jt, jf, k)`.
pub type Insn = (u16, u8, u8, u32);

/// A compiled filter.
pub type Program = Vec<Insn>;

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Bad argument condition in the spec.
    #[error("seccomp: rule for {name}: {why}")]
    Condition {
        /// Syscall name.
        name: String,
        /// Why.
        why: String,
    },
    /// seccompiler refused the filter.
    #[error("seccomp: compile: {0}")]
    Compile(String),
}

/// One refusal of the baseline.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// Syscall name.
    pub name: &'static str,
    /// `Some((arg, mask))`: refused only when `arg & mask == mask`.
    pub when_flags: Option<(u8, u64)>,
}

const fn always(name: &'static str) -> Refusal {
    Refusal {
        name,
        when_flags: None,
    }
}

/// The Berth baseline: refused with EPERM in every jail.
///
/// Each entry says who would otherwise use it against the gateway.
pub const BASELINE: &[Refusal] = &[
    // Kernel modules: a vendor app must never load code into the gateway's
    // kernel (CAP_SYS_MODULE is dropped too; this is the second wall).
    always("init_module"),
    always("finit_module"),
    always("delete_module"),
    // Replacing the running kernel or rebooting the gateway.
    always("kexec_load"),
    always("kexec_file_load"),
    always("reboot"),
    // Mount API: berth-init installs this filter after its own mounts, so
    // only the payload is refused; a jail must not reshape its filesystem
    // view (or reach host paths through new mounts).
    always("mount"),
    always("umount2"),
    always("pivot_root"),
    always("move_mount"),
    always("open_tree"),
    always("fsmount"),
    always("fsopen"),
    always("fsconfig"),
    always("fspick"),
    always("mount_setattr"),
    // Kernel keyrings are not namespaced: keys would leak across vendors.
    always("keyctl"),
    always("add_key"),
    always("request_key"),
    // eBPF and perf expose kernel memory layout and other tenants' activity.
    always("bpf"),
    always("perf_event_open"),
    // Inspecting or writing other processes' memory.
    always("ptrace"),
    always("process_vm_readv"),
    always("process_vm_writev"),
    // The clock is the gateway's (TLS and logs of every vendor depend on it).
    always("settimeofday"),
    always("clock_settime"),
    always("clock_adjtime"),
    always("adjtimex"),
    // The 64-bit time variants of 32-bit architectures (ARMv7).
    always("clock_settime64"),
    always("clock_adjtime64"),
    // Swap is a host-wide resource.
    always("swapon"),
    always("swapoff"),
    // Process accounting writes a host file.
    always("acct"),
    // Opens any file of the filesystem from a forged handle, bypassing the
    // jail's root ("shocker"); needs CAP_DAC_READ_SEARCH, which a spec
    // may grant for other reasons.
    always("open_by_handle_at"),
    // New user namespaces re-grant every capability inside them, the usual
    // first step of kernel exploits; jails that need one get it from Berth.
    Refusal {
        name: "unshare",
        when_flags: Some((0, libc::CLONE_NEWUSER as u64)),
    },
    Refusal {
        name: "setns",
        when_flags: Some((1, libc::CLONE_NEWUSER as u64)),
    },
    Refusal {
        name: "clone",
        when_flags: Some((0, libc::CLONE_NEWUSER as u64)),
    },
];

/// Refused with ENOSYS rather than EPERM, before the baseline's other
/// rules. `clone3` passes its flags in a struct that seccomp cannot read,
/// so a `CLONE_NEWUSER` refusal on `clone` alone is bypassed through it;
/// ENOSYS makes glibc and musl fall back to `clone`, where the flag check
/// applies (runc and Docker's default profile do the same).
pub const ENOSYS: &[&str] = &["clone3"];

/// `nr == n` for each of [`ENOSYS`] → `SECCOMP_RET_ERRNO | ENOSYS`.
fn enosys_guard(nr: impl Fn(&str) -> Option<u32>) -> Program {
    let mut p: Program = vec![(BPF_LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    for n in ENOSYS.iter().filter_map(|name| nr(name)) {
        p.push((BPF_JEQ_K, 0, 1, n));
        p.push((BPF_RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    }
    p
}

/// The architectures Berth builds filters for: those of seccompiler plus
/// 32-bit ARM (the ARMv7 gateways), whose baseline Berth emits itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (seccompiler).
    X86_64,
    /// aarch64 (seccompiler).
    Aarch64,
    /// 32-bit ARM EABI (own emitter, baseline only).
    Arm,
}

/// Name of a seccompiler architecture.
pub fn arch_name(arch: TargetArch) -> &'static str {
    match arch {
        TargetArch::x86_64 => "x86_64",
        TargetArch::aarch64 => "aarch64",
        TargetArch::riscv64 => "riscv64",
    }
}

/// The architecture this binary runs on, if Berth has tables for it.
pub fn native_arch() -> Option<Arch> {
    if cfg!(target_arch = "x86_64") {
        Some(Arch::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Arch::Aarch64)
    } else if cfg!(target_arch = "arm") {
        Some(Arch::Arm)
    } else {
        None
    }
}

/// Syscall number of `name` on `arch`.
pub fn number(arch: TargetArch, name: &str) -> Option<i64> {
    let table = match arch {
        TargetArch::x86_64 => syscalls::X86_64,
        // riscv64 uses the generic table too.
        TargetArch::aarch64 | TargetArch::riscv64 => syscalls::AARCH64,
    };
    table.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

fn to_program(p: BpfProgram) -> Program {
    p.into_iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect()
}

/// x86_64 only: refuse x32-ABI syscall numbers (bit 30 set), which would
/// otherwise slip past rules written for 64-bit numbers. Prepended to each
/// program; seccompiler's own prologue reloads what it needs.
fn x32_guard() -> Program {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    vec![
        (BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        (BPF_JMP_JGE_K, 0, 1, 0x4000_0000),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
    ]
}

fn finish(arch: TargetArch, f: SeccompFilter) -> Result<Program, SeccompError> {
    let p: BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let mut out = if arch == TargetArch::x86_64 {
        x32_guard()
    } else {
        Vec::new()
    };
    out.extend(to_program(p));
    Ok(out)
}

/// The baseline for `arch`.
pub fn baseline(arch: TargetArch) -> Result<Program, SeccompError> {
    let audit = match arch {
        TargetArch::x86_64 => AUDIT_ARCH_X86_64,
        TargetArch::aarch64 => AUDIT_ARCH_AARCH64,
        TargetArch::riscv64 => AUDIT_ARCH_RISCV64,
    };
    emit_baseline(audit, arch == TargetArch::x86_64, |n| {
        number(arch, n).map(|v| v as u32)
    })
}

fn action(a: SeccompActionSpec) -> SeccompAction {
    match a {
        SeccompActionSpec::Allow => SeccompAction::Allow,
        SeccompActionSpec::Errno(e) => SeccompAction::Errno(e),
        SeccompActionSpec::KillProcess => SeccompAction::KillProcess,
        SeccompActionSpec::KillThread => SeccompAction::KillThread,
        SeccompActionSpec::Trap => SeccompAction::Trap,
        SeccompActionSpec::Log => SeccompAction::Log,
    }
}

/// Compiles the spec's profile for `arch`. Names the architecture lacks are
/// skipped, as runc and libseccomp do (profiles list syscalls of every
/// architecture).
pub fn compile_spec(spec: &SeccompSpec, arch: TargetArch) -> Result<Program, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Syscalls matched on the number alone; seccompiler spells that as an
    // empty rule vector (it refuses rules without conditions).
    let mut unconditional = std::collections::BTreeSet::new();
    for r in &spec.rules {
        for name in &r.names {
            let Some(nr) = number(arch, name) else {
                tracing::debug!(syscall = %name, arch = arch_name(arch), "seccomp: syscall unknown, skipped");
                continue;
            };
            let entry = rules.entry(nr).or_default();
            if r.args.is_empty() {
                unconditional.insert(nr);
                continue;
            }
            let mut conds = Vec::new();
            for (idx, op, v, v2) in &r.args {
                let (op, value) = match op.as_str() {
                    "EQ" => (SeccompCmpOp::Eq, *v),
                    "NE" => (SeccompCmpOp::Ne, *v),
                    "LT" => (SeccompCmpOp::Lt, *v),
                    "LE" => (SeccompCmpOp::Le, *v),
                    "GT" => (SeccompCmpOp::Gt, *v),
                    "GE" => (SeccompCmpOp::Ge, *v),
                    "MASKED_EQ" => (SeccompCmpOp::MaskedEq(*v), *v2),
                    other => {
                        return Err(SeccompError::Condition {
                            name: name.clone(),
                            why: format!("operator {other} is not supported"),
                        })
                    }
                };
                conds.push(
                    SeccompCondition::new(*idx, SeccompCmpArgLen::Qword, op, value).map_err(
                        |e| SeccompError::Condition {
                            name: name.clone(),
                            why: e.to_string(),
                        },
                    )?,
                );
            }
            entry.push(
                SeccompRule::new(conds).map_err(|e| SeccompError::Condition {
                    name: name.clone(),
                    why: e.to_string(),
                })?,
            );
        }
    }
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    let f = SeccompFilter::new(
        rules,
        action(spec.default_action),
        action(spec.rule_action),
        arch,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    finish(arch, f)
}

/// Every program to install for `spec` on `arch`, baseline first.
pub fn programs(spec: Option<&SeccompSpec>, arch: Arch) -> Result<Vec<Program>, SeccompError> {
    let target = match arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
        Arch::Arm => {
            if spec.is_some() {
                return Err(SeccompError::Compile(
                    "linux.seccomp profiles are not supported on 32-bit ARM (only the Berth baseline is)".into(),
                ));
            }
            return Ok(vec![arm_baseline()?]);
        }
    };
    let mut out = vec![baseline(target)?];
    if let Some(s) = spec {
        out.push(compile_spec(s, target)?);
    }
    Ok(out)
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `EM_ARM | __AUDIT_ARCH_LE` (linux/audit.h).
pub const AUDIT_ARCH_ARM: u32 = 40 | 0x4000_0000;

/// `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE` (linux/audit.h).
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
pub const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `EM_RISCV | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
pub const AUDIT_ARCH_RISCV64: u32 = 243 | 0x8000_0000 | 0x4000_0000;

/// The baseline for 32-bit ARM (seccompiler has no ARMv7 backend).
pub fn arm_baseline() -> Result<Program, SeccompError> {
    emit_baseline(AUDIT_ARCH_ARM, false, |n| {
        syscalls::ARM
            .iter()
            .find(|(m, _)| *m == n)
            .map(|&(_, v)| v as u32)
    })
}

/// The baseline as classic BPF, for an architecture `audit` whose numbers
/// `nr` gives. Laid out for a cheap install: the kernel translates and
/// JIT-compiles a filter when it is installed, in the payload's path to its
/// exec, and runs it once per syscall number of each of the task's
/// architectures to precompute which always pass (the seccomp action
/// cache), so both its length and the length of its paths cost. Measured
/// here: 43 instructions in one chain of comparisons 0.25 ms, 49 as a
/// tree 0.11 ms (seccompiler's chain for this list: 204 instructions,
/// 0.7 ms).
///
/// So: the ENOSYS guard; the architecture (kill on another); on x86_64
/// the x32 guard; then a binary tree of `jge` over the refused numbers,
/// with leaves of a few `jeq`s that jump to a shared `ret EPERM` or, for a
/// flagged entry, to a block that tests its argument's flags and answers
/// either way; `ret ALLOW` after each leaf. seccomp_data is `{nr, arch,
/// ip, args[6]}` (seccomp(2)); a flag word sits in the low half of its
/// 64-bit slot, which comes first on these little-endian architectures
/// (the masks are 32-bit).
fn emit_baseline(
    audit: u32,
    x32: bool,
    nr: impl Fn(&str) -> Option<u32>,
) -> Result<Program, SeccompError> {
    let deny_ret = RET_ERRNO | libc::EPERM as u32;
    let mut a = Asm::default();
    for (code, jt, jf, k) in enosys_guard(&nr) {
        a.op(code, To::Skip(jt), To::Skip(jf), k);
    }
    a.op(BPF_LD_W_ABS, To::Skip(0), To::Skip(0), 4); // arch
    a.op(BPF_JEQ_K, To::Skip(1), To::Skip(0), audit);
    a.op(BPF_RET_K, To::Skip(0), To::Skip(0), RET_KILL_PROCESS);
    let guard = if x32 {
        x32_guard() // reloads nr
    } else {
        vec![(BPF_LD_W_ABS, 0, 0, 0)] // nr
    };
    for (code, jt, jf, k) in guard {
        a.op(code, To::Skip(jt), To::Skip(jf), k);
    }
    let deny = a.label();
    let mut entries: Vec<(u32, To)> = Vec::new();
    let mut flagged: Vec<(usize, u8, u32)> = Vec::new();
    for r in BASELINE {
        let Some(n) = nr(r.name) else {
            // Not on this architecture (e.g. the 64-bit time calls of
            // 32-bit ones): nothing to refuse.
            continue;
        };
        if entries.iter().any(|&(m, _)| m == n) {
            continue;
        }
        match r.when_flags {
            None => entries.push((n, To::Label(deny))),
            Some((arg, mask)) => {
                let l = a.label();
                flagged.push((l, arg, mask as u32));
                entries.push((n, To::Label(l)));
            }
        }
    }
    entries.sort_by_key(|&(n, _)| n);
    tree(&mut a, &entries);
    for (l, arg, mask) in flagged {
        a.place(l);
        a.op(
            BPF_LD_W_ABS,
            To::Skip(0),
            To::Skip(0),
            16 + 8 * u32::from(arg),
        );
        a.op(BPF_AND_K, To::Skip(0), To::Skip(0), mask);
        a.op(BPF_JEQ_K, To::Skip(0), To::Skip(1), mask);
        a.op(BPF_RET_K, To::Skip(0), To::Skip(0), deny_ret);
        a.op(BPF_RET_K, To::Skip(0), To::Skip(0), RET_ALLOW);
    }
    a.place(deny);
    a.op(BPF_RET_K, To::Skip(0), To::Skip(0), deny_ret);
    a.finish()
}

/// Most `jeq`s in a leaf of [`tree`].
const LEAF: usize = 4;

/// A binary search over `entries` (sorted by number; the accumulator holds
/// the syscall number): `jge` splits down to leaves of at most [`LEAF`]
/// `jeq`s, each followed by `ret ALLOW`.
fn tree(a: &mut Asm, entries: &[(u32, To)]) {
    if entries.len() <= LEAF {
        for &(n, to) in entries {
            a.op(BPF_JEQ_K, to, To::Skip(0), n);
        }
        a.op(BPF_RET_K, To::Skip(0), To::Skip(0), RET_ALLOW);
        return;
    }
    let mid = entries.len() / 2;
    let upper = a.label();
    a.op(BPF_JGE_K, To::Label(upper), To::Skip(0), entries[mid].0);
    tree(a, &entries[..mid]);
    a.place(upper);
    tree(a, &entries[mid..]);
}

/// Where a jump goes while a program is laid out: so many instructions
/// ahead, or a label placed later.
#[derive(Debug, Clone, Copy)]
enum To {
    Skip(u8),
    Label(usize),
}

/// A classic-BPF program under construction, with forward labels.
#[derive(Default)]
struct Asm {
    insns: Vec<(u16, To, To, u32)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn op(&mut self, code: u16, jt: To, jf: To, k: u32) {
        self.insns.push((code, jt, jf, k));
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn place(&mut self, l: usize) {
        self.labels[l] = Some(self.insns.len());
    }

    /// The program, every label resolved to a forward offset (classic BPF
    /// jumps only forward, by at most 255).
    fn finish(self) -> Result<Program, SeccompError> {
        let resolve = |at: usize, to: To| -> Result<u8, SeccompError> {
            match to {
                To::Skip(n) => Ok(n),
                To::Label(l) => self.labels[l]
                    .and_then(|pos| pos.checked_sub(at + 1))
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or_else(|| {
                        SeccompError::Compile(format!(
                            "baseline: jump from instruction {at} out of reach"
                        ))
                    }),
            }
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| Ok((code, resolve(i, jt)?, resolve(i, jf)?, k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syscall table: `(name, number)`.
    type Table = &'static [(&'static str, i64)];

    /// The baseline of each architecture, its audit value and its table.
    fn all_baselines() -> Vec<(Program, u32, Table)> {
        vec![
            (
                baseline(TargetArch::x86_64).unwrap(),
                AUDIT_ARCH_X86_64,
                syscalls::X86_64,
            ),
            (
                baseline(TargetArch::aarch64).unwrap(),
                AUDIT_ARCH_AARCH64,
                syscalls::AARCH64,
            ),
            (arm_baseline().unwrap(), AUDIT_ARCH_ARM, syscalls::ARM),
        ]
    }

    #[test]
    fn baseline_is_short_and_starts_with_its_guards() {
        for (p, audit, table) in &all_baselines() {
            // About two instructions per refused number, and every number
            // answered within a guard, a tree's depth and a leaf: what
            // keeps the install cheap (see emit_baseline).
            assert!(
                p.len() <= BASELINE.len() * 2 + 12,
                "{} instructions",
                p.len()
            );
            for n in table.iter().map(|&(_, n)| n as u32).chain(0..600) {
                let (_, steps) = run_counted(p, n, *audit, [0; 6]);
                assert!(steps <= 16, "{n}: {steps} instructions");
            }
        }
        // x86_64: the ENOSYS guard, the architecture, then the x32 guard.
        let g = enosys_guard(|n| number(TargetArch::x86_64, n).map(|v| v as u32));
        let p = baseline(TargetArch::x86_64).unwrap();
        assert_eq!(p[..g.len()], g[..]);
        assert_eq!(p[g.len() + 1], (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64));
        assert_eq!(p[g.len() + 3..g.len() + 6], x32_guard()[..]);
    }

    #[test]
    fn every_baseline_name_is_known_somewhere() {
        for r in BASELINE {
            let arm = syscalls::ARM.iter().any(|(n, _)| *n == r.name);
            assert!(arm, "{} missing from the ARM table", r.name);
            if !r.name.ends_with("64") {
                assert!(number(TargetArch::x86_64, r.name).is_some(), "{}", r.name);
            }
        }
    }

    /// A classic-BPF interpreter for the instructions seccomp filters use,
    /// so tests check what a program answers, not how it looks.
    fn run(p: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        run_counted(p, nr, arch, args).0
    }

    /// [`run`], and how many instructions it took.
    fn run_counted(p: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let mut steps = 0;
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let word =
            |k: u32| u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap());
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let mut mem = [0u32; 16];
        loop {
            let (code, jt, jf, k) = p[pc];
            pc += 1;
            steps += 1;
            let src = if code & 0x08 != 0 { x } else { k };
            match code & 0x07 {
                0x00 => match code & 0xe0 {
                    0x20 => a = word(k),
                    0x00 => a = k,
                    0x60 => a = mem[k as usize],
                    _ => panic!("ld {code:#x}"),
                },
                0x01 => match code & 0xe0 {
                    0x00 => x = k,
                    0x60 => x = mem[k as usize],
                    _ => panic!("ldx {code:#x}"),
                },
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x04 => {
                    a = match code & 0xf0 {
                        0x00 => a.wrapping_add(src),
                        0x10 => a.wrapping_sub(src),
                        0x40 => a | src,
                        0x50 => a & src,
                        0x60 => a << src,
                        0x70 => a >> src,
                        _ => panic!("alu {code:#x}"),
                    }
                }
                0x05 => {
                    let take = match code & 0xf0 {
                        0x00 => {
                            pc += k as usize;
                            continue;
                        }
                        0x10 => a == src,
                        0x20 => a > src,
                        0x30 => a >= src,
                        0x40 => a & src != 0,
                        _ => panic!("jmp {code:#x}"),
                    };
                    pc += if take { jt as usize } else { jf as usize };
                }
                0x06 => return (k, steps),
                0x07 => {
                    if code & 0xf8 == 0 {
                        x = a
                    } else {
                        a = x
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    const EPERM: u32 = RET_ERRNO | 1;

    #[test]
    fn baseline_answers_as_documented_on_every_arch() {
        let newuser = libc::CLONE_NEWUSER as u64;
        let newns = libc::CLONE_NEWNS as u64;
        type Numbers = Box<dyn Fn(&str) -> u32>;
        let cases: Vec<(Program, u32, Numbers)> = vec![
            (
                baseline(TargetArch::x86_64).unwrap(),
                62 | 0x8000_0000 | 0x4000_0000,
                Box::new(|n| number(TargetArch::x86_64, n).unwrap() as u32),
            ),
            (
                baseline(TargetArch::aarch64).unwrap(),
                183 | 0x8000_0000 | 0x4000_0000,
                Box::new(|n| number(TargetArch::aarch64, n).unwrap() as u32),
            ),
            (
                arm_baseline().unwrap(),
                AUDIT_ARCH_ARM,
                Box::new(|n| {
                    syscalls::ARM
                        .iter()
                        .find(|(m, _)| *m == n)
                        .map(|&(_, v)| v as u32)
                        .unwrap_or(3)
                }),
            ),
        ];
        for (p, audit, nr) in &cases {
            for name in [
                "reboot",
                "mount",
                "keyctl",
                "bpf",
                "init_module",
                "ptrace",
                "open_by_handle_at",
            ] {
                assert_eq!(run(p, nr(name), *audit, [0; 6]), EPERM, "{name}");
            }
            // clone3 (flags out of seccomp's reach) answers ENOSYS so libc
            // falls back to clone, whose CLONE_NEWUSER check applies.
            assert_eq!(
                run(p, nr("clone3"), *audit, [0; 6]),
                RET_ERRNO | libc::ENOSYS as u32
            );
            assert_eq!(run(p, nr("clone"), *audit, [newuser, 0, 0, 0, 0, 0]), EPERM);
            // An ordinary syscall (ARM: read is 3).
            let read = if *audit == AUDIT_ARCH_ARM {
                3
            } else {
                nr("read")
            };
            assert_eq!(run(p, read, *audit, [0; 6]), RET_ALLOW);
            // unshare: new user namespaces refused, others allowed.
            assert_eq!(
                run(p, nr("unshare"), *audit, [newuser, 0, 0, 0, 0, 0]),
                EPERM
            );
            assert_eq!(
                run(p, nr("unshare"), *audit, [newns, 0, 0, 0, 0, 0]),
                RET_ALLOW
            );
            assert_eq!(run(p, nr("setns"), *audit, [3, newuser, 0, 0, 0, 0]), EPERM);
            // Another architecture's calling convention is killed.
            assert_eq!(run(p, read, 0x1234, [0; 6]), RET_KILL_PROCESS);
        }
        // x32 numbers are killed on x86_64.
        assert_eq!(
            run(&cases[0].0, 0x4000_0000 | 169, cases[0].1, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    /// Every number answers what the baseline says: EPERM for a refused one
    /// (with its flag, for a flagged one), ENOSYS for clone3, ALLOW for all
    /// the others (whatever their arguments), on every architecture.
    #[test]
    fn baseline_answers_every_number() {
        for (p, audit, table) in &all_baselines() {
            for n in 0..1024u32 {
                let name = table
                    .iter()
                    .find(|&&(_, m)| m == i64::from(n))
                    .map(|&(name, _)| name);
                let refusal = name.and_then(|name| BASELINE.iter().find(|r| r.name == name));
                match refusal {
                    Some(Refusal {
                        when_flags: Some((arg, mask)),
                        ..
                    }) => {
                        let mut args = [0u64; 6];
                        assert_eq!(run(p, n, *audit, args), RET_ALLOW, "{n} without flag");
                        args[usize::from(*arg)] = *mask | 0x100;
                        assert_eq!(run(p, n, *audit, args), EPERM, "{n} with flag");
                    }
                    Some(_) => assert_eq!(run(p, n, *audit, [0; 6]), EPERM, "{name:?}"),
                    None if name.is_some_and(|name| ENOSYS.contains(&name)) => {
                        assert_eq!(run(p, n, *audit, [0; 6]), RET_ERRNO | libc::ENOSYS as u32)
                    }
                    None => assert_eq!(run(p, n, *audit, [u64::MAX; 6]), RET_ALLOW, "{n}"),
                }
            }
        }
    }

    #[test]
    fn numbers_differ_per_arch() {
        assert_eq!(number(TargetArch::x86_64, "reboot"), Some(169));
        assert_eq!(number(TargetArch::aarch64, "reboot"), Some(142));
        assert_eq!(number(TargetArch::aarch64, "mount"), Some(40));
        assert_eq!(number(TargetArch::x86_64, "nope"), None);
    }

    #[test]
    fn spec_profile_compiles_with_conditions() {
        let s = SeccompSpec {
            default_action: SeccompActionSpec::Errno(1),
            rule_action: SeccompActionSpec::Allow,
            rules: vec![
                crate::spec::SyscallRuleSpec {
                    names: vec!["read".into(), "write".into(), "not_a_syscall".into()],
                    args: vec![],
                },
                crate::spec::SyscallRuleSpec {
                    names: vec!["personality".into()],
                    args: vec![(0, "MASKED_EQ".into(), 0xff, 8)],
                },
            ],
        };
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let all = programs(Some(&s), arch).unwrap();
            assert_eq!(all.len(), 2);
        }
        // ARMv7 takes the baseline only and refuses a profile it cannot compile.
        assert_eq!(
            programs(None, Arch::Arm).unwrap(),
            vec![arm_baseline().unwrap()]
        );
        assert!(programs(Some(&s), Arch::Arm).is_err());
        let bad = SeccompSpec {
            rules: vec![crate::spec::SyscallRuleSpec {
                names: vec!["read".into()],
                args: vec![(0, "WEIRD".into(), 0, 0)],
            }],
            ..s
        };
        assert_eq!(
            compile_spec(&bad, TargetArch::x86_64)
                .unwrap_err()
                .to_string(),
            "seccomp: rule for read: operator WEIRD is not supported"
        );
    }
}
