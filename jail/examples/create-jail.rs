//! Creates one jail from a busybox rootfs and waits forever (used by the
//! privileged recovery test, which kills this process mid-create).
//!
//! `create-jail NAME VENDOR STATE_ROOT CGROUP_PARENT ROOTFS`

use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 6,
        "usage: create-jail NAME VENDOR STATE_ROOT CGROUP_PARENT ROOTFS"
    );
    let rootfs = PathBuf::from(&a[5]);
    let oci = testing::oci_spec(&rootfs, "sleep 1000");
    let opts = testing::options(&a[1], &a[2], &PathBuf::from(&a[3]), &a[4]);
    let spec = jail::JailSpec::from_oci(&oci, &opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let j = jail::Jail::create(spec).await?;
        println!("created {}", j.name());
        std::future::pending::<()>().await;
        Ok(())
    })
}
