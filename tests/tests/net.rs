//! `--net`: each vendor's jails sit on the vendor's bridge, reach their own
//! gateway and each other, and cannot reach another vendor's jails.

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use berth_tests::{host, wait_until, TestEnv};
use serde_json::Value;

fn address(env: &TestEnv, name: &str) -> String {
    let out = env.run(["jail", "ls", "--json"]);
    let v: Value = serde_json::from_str(out.ok()).expect("ls json");
    let j = v
        .as_array()
        .and_then(|a| a.iter().find(|j| j["name"] == name))
        .unwrap_or_else(|| panic!("{name} not listed: {}", out.stdout))
        .clone();
    j["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {name}: {j}"))
        .to_string()
}

#[test]
#[ignore = "privileged: needs root"]
fn vendors_are_isolated_but_reach_their_gateway() {
    let env = TestEnv::new_with_rootfs();
    let (va, vb) = (env.vendor("a"), env.vendor("b"));
    let root = env.rootfs.display().to_string();
    let server = format!("srv-{}", env.tag);
    env.run([
        "jail",
        "create",
        &server,
        "--rootfs",
        &root,
        "--vendor",
        &vb,
        "--net",
        "--",
        "/bin/sh",
        "-c",
        "while :; do echo pong | nc -l -p 7000; done",
    ])
    .ok();
    env.run(["jail", "start", &server]).ok();
    let b_addr = address(&env, &server);
    assert!(
        host::link_exists(&host::bridge_name(&vb)),
        "no bridge for {vb}"
    );
    // The server listens once its shell has started nc.
    assert!(wait_until(Duration::from_secs(5), || {
        env.run([
            "jail",
            "exec",
            &server,
            "--",
            "/bin/sh",
            "-c",
            "netstat -ltn | grep -q ':7000 '",
        ])
        .status
        .success()
    }));

    let probe = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); \
         ping -c 1 -W 2 $gw >/dev/null 2>&1 && echo gateway; \
         echo | nc -w 2 {b_addr} 7000; \
         ping -c 1 -W 1 {b_addr} >/dev/null 2>&1 && echo ping-b; \
         echo done"
    );
    // Same vendor: gateway, and the server answers.
    let out = env.jail_run(&["--vendor", &vb, "--net"], &["/bin/sh", "-c", &probe]);
    assert_eq!(out.ok(), "gateway\npong\nping-b\ndone\n");
    // Other vendor: its own gateway, but nothing of vendor b.
    let out = env.jail_run(&["--vendor", &va, "--net"], &["/bin/sh", "-c", &probe]);
    assert_eq!(out.ok(), "gateway\ndone\n", "vendor isolation broken");

    env.run(["jail", "rm", "--force", &server]).ok();
    env.assert_no_leftovers(&[&va, &vb]);
}

#[test]
#[ignore = "privileged: needs root"]
fn jail_without_net_has_only_loopback() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(
        &[],
        &["/bin/sh", "-c", "ip -o link | cut -d: -f2 | tr -d ' '"],
    );
    assert_eq!(out.ok(), "lo\n");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn user_ns_jail_configures_its_own_end_of_the_veth() {
    // Init configures the jail's end from inside its namespaces; with a
    // user namespace it does so as the namespace's root, not the host's.
    let env = TestEnv::new_with_rootfs();
    let v = env.vendor("u");
    let out = env.jail_run(
        &["--user-ns", "--net", "--vendor", &v],
        &[
            "/bin/sh",
            "-c",
            "id -u; ip -4 -o addr show dev eth0 | awk '{print $4}'; \
             gw=$(ip route | awk '/^default/ {print $3}'); echo \"$gw\"; \
             ping -c1 -W2 \"$gw\" >/dev/null && echo reached",
        ],
    );
    let stdout = out.ok();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "0", "{stdout}");
    let (addr, prefix) = lines[1].split_once('/').expect("address/prefix");
    let addr: std::net::Ipv4Addr = addr.parse().expect("address");
    let gw: std::net::Ipv4Addr = lines[2].parse().expect("gateway");
    let prefix: u32 = prefix.parse().expect("prefix");
    let mask = u32::MAX << (32 - prefix);
    assert_eq!(u32::from(addr) & mask, u32::from(gw) & mask, "{stdout}");
    assert_ne!(addr, gw);
    assert_eq!(lines[3], "reached", "{stdout}");
    env.assert_no_leftovers(&[&v]);
}
