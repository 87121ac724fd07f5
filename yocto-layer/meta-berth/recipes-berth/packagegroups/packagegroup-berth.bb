SUMMARY = "Berth gateway agent and what its jails need at run time"
DESCRIPTION = "berthd with its tools, and the kernel modules for jails on \
               kernels that build them as modules (without \
               BERTH_KERNEL_FRAGMENT)."
BUGTRACKER = "https://example.invalid/berth/issues"
SECTION = "admin"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "berth"

# Built in when the berth-jails.cfg fragment is applied; recommended so a
# kernel that builds them as modules still has them in the image.
RRECOMMENDS:${PN} = "\
    kernel-module-veth \
    kernel-module-bridge \
    kernel-module-overlay \
    kernel-module-nf-tables \
    kernel-module-nft-nat \
    kernel-module-nft-masq \
    kernel-module-nft-ct \
    kernel-module-nf-nat \
    kernel-module-nf-conntrack \
    "
