//! The cgroup v2 device allow-list: a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! assembled here instruction by instruction, the way runc
//! (`libcontainer/cgroups/devices/devicefilter.go`), crun and youki
//! (`libcgroups/src/v2/devices/program.rs`) generate theirs.
//!
//! The kernel calls the program with a `struct bpf_cgroup_dev_ctx
//! { u32 access_type; u32 major; u32 minor; }` where `access_type` is
//! `(access << 16) | type` (include/uapi/linux/bpf.h). It returns 1 to allow
//! and 0 to deny.
//!
//! Semantics match [`crate::Limits::devices`]: everything is denied, then the
//! rules apply in order with a later rule overriding an earlier one. So the
//! rules are tested last to first and the first match decides. An allow rule
//! matches a request whose every access bit it grants (as v1 does); a deny
//! rule matches a request that asks for any bit it denies.

use crate::{DeviceKind, DeviceRule};

// Instruction classes, sizes, modes and operations (linux/bpf_common.h,
// linux/bpf.h).
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_W (0) | BPF_MEM
const ALU32_AND_K: u8 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0x04 | 0xb0; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0x04 | 0xb0 | 0x08; // BPF_ALU | BPF_MOV | BPF_X
const JMP_JEQ_K: u8 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JNE_K: u8 = 0x05 | 0x50; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

// bpf_cgroup_dev_ctx values (linux/bpf.h).
const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1; // BPF_DEVCG_ACC_MKNOD
const ACC_READ: i32 = 2; // BPF_DEVCG_ACC_READ
const ACC_WRITE: i32 = 4; // BPF_DEVCG_ACC_WRITE
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

// Registers: R0 return value, R1 context, R2 type, R3 access, R4 major,
// R5 minor (R1 is reused as scratch once the context is read).
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    pub(crate) dst: u8,
    pub(crate) src: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The 8 bytes the kernel reads: code, `dst_reg:4 src_reg:4` (low nibble
    /// first on little-endian, high first on big-endian), off, imm.
    fn encode(self) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0x0f)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

/// Why a rule cannot be expressed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadRule {
    pub(crate) what: &'static str,
    pub(crate) value: String,
}

/// Assembles the program for `rules` (default deny).
pub(crate) fn device_program(rules: &[DeviceRule]) -> Result<Vec<Insn>, BadRule> {
    let mut prog = vec![
        Insn::new(LDX_MEM_W, R2, R1, 0, 0),
        Insn::new(ALU32_AND_K, R2, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, R3, R1, 0, 0),
        Insn::new(ALU32_RSH_K, R3, 0, 0, 16),
        Insn::new(LDX_MEM_W, R4, R1, 4, 0),
        Insn::new(LDX_MEM_W, R5, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        prog.extend(rule_block(rule)?);
    }
    prog.push(Insn::new(ALU32_MOV_K, R0, 0, 0, 0));
    prog.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    Ok(prog)
}

/// The instructions testing one rule; a non-match jumps past the block.
fn rule_block(rule: &DeviceRule) -> Result<Vec<Insn>, BadRule> {
    let bit = |on: bool, b: i32| if on { b } else { 0 };
    let bits = bit(rule.access.read, ACC_READ)
        | bit(rule.access.write, ACC_WRITE)
        | bit(rule.access.mknod, ACC_MKNOD);
    if bits == 0 {
        // Grants or denies nothing: matches no request.
        return Ok(Vec::new());
    }
    let number = |n: Option<u32>, what| -> Result<Option<i32>, BadRule> {
        // Linux majors have 12 bits and minors 20: anything above i32::MAX
        // is no device and would be sign-extended in a 64-bit compare.
        n.map(|v| {
            i32::try_from(v).map_err(|_| BadRule {
                what,
                value: v.to_string(),
            })
        })
        .transpose()
    };
    let major = number(rule.major, "device major")?;
    let minor = number(rule.minor, "device minor")?;

    // Jumps are patched to "next block" once the length is known.
    let mut block: Vec<Insn> = Vec::new();
    let mut jumps: Vec<usize> = Vec::new();
    let mut jump = |block: &mut Vec<Insn>, code, dst, imm| {
        jumps.push(block.len());
        block.push(Insn::new(code, dst, 0, 0, imm));
    };
    match rule.kind {
        DeviceKind::All => {}
        DeviceKind::Char => jump(&mut block, JMP_JNE_K, R2, DEV_CHAR),
        DeviceKind::Block => jump(&mut block, JMP_JNE_K, R2, DEV_BLOCK),
    }
    if bits != ACC_ALL {
        block.push(Insn::new(ALU32_MOV_X, R1, R3, 0, 0));
        if rule.allow {
            // Skip unless every requested bit is granted.
            block.push(Insn::new(ALU32_AND_K, R1, 0, 0, !bits & ACC_ALL));
            jump(&mut block, JMP_JNE_K, R1, 0);
        } else {
            // Skip unless some requested bit is denied.
            block.push(Insn::new(ALU32_AND_K, R1, 0, 0, bits));
            jump(&mut block, JMP_JEQ_K, R1, 0);
        }
    }
    if let Some(m) = major {
        jump(&mut block, JMP_JNE_K, R4, m);
    }
    if let Some(m) = minor {
        jump(&mut block, JMP_JNE_K, R5, m);
    }
    block.push(Insn::new(ALU32_MOV_K, R0, 0, 0, i32::from(rule.allow)));
    block.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    let len = block.len();
    for at in jumps {
        // Offsets count from the instruction after the jump; blocks are a
        // handful of instructions, far below i16::MAX.
        block[at].off = i16::try_from(len - at - 1).unwrap_or(i16::MAX);
    }
    Ok(block)
}

/// The program as the byte array `BPF_PROG_LOAD` takes.
pub(crate) fn encode(prog: &[Insn]) -> Vec<u8> {
    prog.iter().flat_map(|i| i.encode()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceAccess;

    /// A tiny interpreter for the instructions the assembler emits, so the
    /// program's decisions are tested without a kernel.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            pc += 1;
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, 1, "loads only from the context");
                    r[d] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU32_AND_K => r[d] = u64::from((r[d] as u32) & (i.imm as u32)),
                ALU32_RSH_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                ALU32_MOV_K => r[d] = u64::from(i.imm as u32),
                ALU32_MOV_X => r[d] = u64::from(r[s] as u32),
                JMP_JEQ_K | JMP_JNE_K => {
                    let eq = r[d] == i.imm as i64 as u64;
                    if eq == (i.code == JMP_JEQ_K) {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not exit");
    }

    fn rule(
        allow: bool,
        kind: DeviceKind,
        mm: (Option<u32>, Option<u32>),
        acc: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major: mm.0,
            minor: mm.1,
            access: DeviceAccess {
                read: acc.contains('r'),
                write: acc.contains('w'),
                mknod: acc.contains('m'),
            },
        }
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn empty_list_denies_everything() {
        let p = device_program(&[]).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 0);
    }

    #[test]
    fn allow_rules_match_type_numbers_and_access() {
        let p = device_program(&[
            rule(true, DeviceKind::Char, (Some(1), Some(3)), "rwm"),
            rule(true, DeviceKind::Char, (Some(136), None), "rw"),
            rule(true, DeviceKind::Block, (None, None), "m"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 7), 0, "/dev/full");
        assert_eq!(run(&p, DEV_BLOCK, RW, 1, 3), 0, "block 1:3");
        assert_eq!(run(&p, DEV_CHAR, RW, 136, 42), 1, "pty any minor");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 136, 42), 0, "no mknod on pty");
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 1), 1, "mknod any block");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 1), 0, "no read of block");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let p = device_program(&[
            rule(true, DeviceKind::All, (None, None), "rwm"),
            rule(false, DeviceKind::Char, (Some(1), Some(7)), "w"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 7), 0, "any denied bit denies");
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);

        // Re-allowing after a deny wins again.
        let p = device_program(&[
            rule(false, DeviceKind::All, (None, None), "rwm"),
            rule(true, DeviceKind::Char, (Some(1), Some(7)), "r"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 7), 0);
    }

    #[test]
    fn rules_granting_nothing_or_out_of_range_numbers() {
        let p = device_program(&[rule(true, DeviceKind::All, (None, None), "")]).unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
        let err = device_program(&[rule(true, DeviceKind::Char, (Some(u32::MAX), None), "r")])
            .unwrap_err();
        assert_eq!(err.what, "device major");
    }

    #[test]
    fn encoding_puts_dst_in_the_low_nibble() {
        let b = Insn::new(LDX_MEM_W, R4, R1, 4, 0).encode();
        assert_eq!(b[0], 0x61);
        if cfg!(target_endian = "little") {
            assert_eq!(b[1], 0x14);
        }
        assert_eq!(encode(&device_program(&[]).unwrap()).len(), 64);
    }
}
