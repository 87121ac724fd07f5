//! OCI runtime specs built in code.
//!
//! Each value here equals what oci-spec's deserialiser makes of the JSON
//! form that names only the given members: absent members stay `None`.
//! oci-spec's builders and `Default` impls would instead fill them with
//! youki's defaults (a `sh` process, capabilities, rlimits, namespaces,
//! masked paths, the hostname "youki", ...), which [`JailSpec::from_oci`]
//! would then apply.
//!
//! Building specs this way rather than through `serde_json::from_value`
//! keeps the runtime spec's deserialiser out of binaries that only build
//! specs: it validates `process.execCPUAffinity` with a regex, and the
//! regex engine with the deserialisers of every OCI struct took 1 MB of
//! the stripped armv7 `berthd` (cross/README.md).
//!
//! [`JailSpec::from_oci`]: crate::JailSpec::from_oci

use std::path::PathBuf;

use oci_spec::runtime::{
    Linux, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, Mount, Process, Root,
    Spec, User,
};

/// `{"ociVersion": "1.0.2", "root": root, "process": process}`.
pub fn spec(root: Root, process: Process) -> Spec {
    let mut s = Spec::default();
    s.set_version("1.0.2".into());
    s.set_root(Some(root));
    s.set_mounts(None);
    s.set_process(Some(process));
    s.set_hostname(None);
    s.set_domainname(None);
    s.set_hooks(None);
    s.set_annotations(None);
    s.set_linux(None);
    s.set_solaris(None);
    s.set_windows(None);
    s.set_vm(None);
    s.set_zos(None);
    s.set_uid_mappings(None);
    s.set_gid_mappings(None);
    s
}

/// `{"path": path, "readonly": readonly}`.
pub fn root(path: impl Into<PathBuf>, readonly: bool) -> Root {
    let mut r = Root::default();
    r.set_path(path.into());
    r.set_readonly(Some(readonly));
    r
}

/// `{"args": args, "env": env, "cwd": cwd, "user": {"uid": uid, "gid": gid}}`.
pub fn process(
    args: Vec<String>,
    env: Vec<String>,
    cwd: impl Into<PathBuf>,
    uid: u32,
    gid: u32,
) -> Process {
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    let mut p = Process::default();
    p.set_terminal(None);
    p.set_console_size(None);
    p.set_user(user);
    p.set_args(Some(args));
    p.set_command_line(None);
    p.set_env(Some(env));
    p.set_cwd(cwd.into());
    p.set_capabilities(None);
    p.set_rlimits(None);
    p.set_no_new_privileges(None);
    p.set_apparmor_profile(None);
    p.set_oom_score_adj(None);
    p.set_selinux_label(None);
    p.set_io_priority(None);
    p.set_scheduler(None);
    p.set_exec_cpu_affinity(None);
    p
}

/// `{}`: Linux settings with no member set.
pub fn linux() -> Linux {
    let mut l = Linux::default();
    l.set_net_devices(None);
    l.set_uid_mappings(None);
    l.set_gid_mappings(None);
    l.set_sysctl(None);
    l.set_resources(None);
    l.set_cgroups_path(None);
    l.set_namespaces(None);
    l.set_devices(None);
    l.set_seccomp(None);
    l.set_rootfs_propagation(None);
    l.set_masked_paths(None);
    l.set_readonly_paths(None);
    l.set_mount_label(None);
    l.set_intel_rdt(None);
    l.set_memory_policy(None);
    l.set_personality(None);
    l.set_time_offsets(None);
    l
}

/// `{"destination": destination, "type": "bind", "source": source,
/// "options": options}`.
pub fn bind_mount(
    destination: impl Into<PathBuf>,
    source: impl Into<PathBuf>,
    options: Vec<String>,
) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options));
    m
}

/// `{"path": path, "type": "c", "major": major, "minor": minor,
/// "fileMode": file_mode, "uid": uid, "gid": gid}`.
pub fn char_device(
    path: impl Into<PathBuf>,
    major: i64,
    minor: i64,
    file_mode: u32,
    uid: u32,
    gid: u32,
) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(path.into());
    d.set_typ(LinuxDeviceType::C);
    d.set_major(major);
    d.set_minor(minor);
    d.set_file_mode(Some(file_mode));
    d.set_uid(Some(uid));
    d.set_gid(Some(gid));
    d
}

/// `{"allow": true, "type": "c", "major": major, "minor": minor,
/// "access": access}`: a device cgroup rule allowing one character device.
pub fn allow_char_device(major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(true);
    r.set_typ(Some(LinuxDeviceType::C));
    r.set_major(Some(major));
    r.set_minor(Some(minor));
    r.set_access(Some(access.into()));
    r
}

/// `{"devices": devices}`: resources with only device cgroup rules.
pub fn device_resources(devices: Vec<LinuxDeviceCgroup>) -> LinuxResources {
    let mut r = LinuxResources::default();
    r.set_devices(Some(devices));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Spec;

    fn parsed(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn minimal_spec_equals_its_json_form() {
        let built = spec(
            root("/r", false),
            process(
                vec!["/bin/sh".into(), "-c".into(), "true".into()],
                vec!["PATH=/bin".into()],
                "/w",
                1,
                2,
            ),
        );
        assert_eq!(
            built,
            parsed(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "/r", "readonly": false},
                "process": {
                    "args": ["/bin/sh", "-c", "true"],
                    "env": ["PATH=/bin"],
                    "cwd": "/w",
                    "user": {"uid": 1, "gid": 2},
                },
            }))
        );
    }

    #[test]
    fn mounts_devices_and_resources_equal_their_json_form() {
        let mut built = spec(
            root("/", true),
            process(vec!["/app".into()], Vec::new(), "/", 0, 0),
        );
        built.set_mounts(Some(vec![bind_mount(
            "/data",
            "/var/lib/v/data",
            vec!["rbind".into(), "ro".into()],
        )]));
        let mut l = linux();
        l.set_devices(Some(vec![char_device("/dev/ttyS0", 4, 64, 0o660, 0, 0)]));
        l.set_resources(Some(device_resources(vec![allow_char_device(
            4, 64, "rwm",
        )])));
        built.set_linux(Some(l));
        assert_eq!(
            built,
            parsed(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "/", "readonly": true},
                "process": {"args": ["/app"], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "mounts": [{
                    "destination": "/data", "type": "bind", "source": "/var/lib/v/data",
                    "options": ["rbind", "ro"],
                }],
                "linux": {
                    "devices": [{
                        "path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64,
                        "fileMode": 0o660, "uid": 0, "gid": 0,
                    }],
                    "resources": {"devices": [
                        {"allow": true, "type": "c", "major": 4, "minor": 64, "access": "rwm"},
                    ]},
                },
            }))
        );
    }

    #[test]
    fn empty_linux_equals_empty_object() {
        let mut built = spec(
            root("/", false),
            process(vec!["/a".into()], Vec::new(), "/", 0, 0),
        );
        built.set_linux(Some(linux()));
        let parsed = parsed(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/", "readonly": false},
            "process": {"args": ["/a"], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {},
        }));
        assert_eq!(built, parsed);
    }
}
