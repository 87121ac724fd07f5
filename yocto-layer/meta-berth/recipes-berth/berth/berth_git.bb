SUMMARY = "Berth gateway agent: isolated vendor jails on multi-tenant IoT gateways"
DESCRIPTION = "berthd detects end devices over serial, BLE and MQTT, asks each \
               device's vendor for a signed plan, and runs the vendor's apps in \
               a jail built from Linux namespaces, cgroups and a veth bridge. \
               berth is its command line."
HOMEPAGE = "https://example.invalid/berth"
BUGTRACKER = "https://example.invalid/berth/issues"
SECTION = "admin"
CVE_PRODUCT = "berth"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the sources declare Apache-2.0 in Cargo.toml and ship no license text
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

PV = "0.1.0+git"

SRC_URI = "git://example.invalid/berth.git;protocol=https;branch=main \
           file://berthd.service \
           file://berthd.toml \
           file://rules.toml \
           "
# Development default: the tip of main, whose Cargo.lock berth-crates.inc in
# the same commit was generated from. Release branches pin a commit here.
# nooelint: oelint.vars.autorev - pinned on release branches, see above
SRCREV ?= "${AUTOREV}"

inherit cargo cargo-update-recipe-crates systemd features_check

require berth-crates.inc

REQUIRED_DISTRO_FEATURES = "systemd"

# The workspace root: the agent package holds berthd and berth, the jail
# package berth-init, the PID 1 of every jail, which berth and berthd look
# for beside themselves (all three go to ${bindir}).
CARGO_SRC_DIR = ""

# Optional backends map to the agent's cargo features of the same name.
PACKAGECONFIG ??= "ble"
# BLE goes through BlueZ on the system D-Bus (pure Rust client, nothing to
# link against at build time).
PACKAGECONFIG[ble] = ",,,bluez5 dbus"
# LXD as an alternative jail backend (meta-virtualization).
PACKAGECONFIG[lxd] = ",,,lxd"
BERTH_CARGO_FEATURES = "${@' '.join('agent/' + f for f in ('ble', 'lxd') if bb.utils.contains('PACKAGECONFIG', f, True, False, d))}"
CARGO_BUILD_FLAGS:append = " -p agent -p jail --bin berthd --bin berth --bin berth-init \
                             --no-default-features --features '${BERTH_CARGO_FEATURES}'"

# Symbol names in the v0 scheme, as the source tree's .cargo/config.toml
# asks of every build (a RUSTFLAGS variable replaces that file's flags):
# berthd's hot-text linker script, agent/berthd-hot.ld, names functions so.
RUSTFLAGS:append = " -Csymbol-mangling-version=v0"

# Which board-configs/*.toml becomes /etc/berth/board.toml.
# Set it in local.conf for other machines.
BERTH_BOARD ??= "${@{'raspberrypi2': 'raspberrypi2', 'intel-corei7-64': 'hpe-el10', 'qemuarm': 'qemu-armv7'}.get(d.getVar('MACHINE'), 'generic-x86_64')}"

SYSTEMD_SERVICE:${PN} = "berthd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/berthd.service ${D}${systemd_system_unitdir}/berthd.service

    install -d -m 0755 ${D}${sysconfdir}/berth
    install -m 0644 ${UNPACKDIR}/berthd.toml ${D}${sysconfdir}/berth/berthd.toml
    # Scan BLE by default when the image has BLE support.
    ${@bb.utils.contains('PACKAGECONFIG', 'ble', "sed -i 's/^ble = false$/ble = true/' ${D}${sysconfdir}/berth/berthd.toml", '', d)}
    install -m 0644 ${UNPACKDIR}/rules.toml ${D}${sysconfdir}/berth/rules.toml
    install -m 0644 ${S}/board-configs/${BERTH_BOARD}.toml ${D}${sysconfdir}/berth/board.toml

    install -d -m 0700 ${D}${localstatedir}/lib/berth

    install -d ${D}${docdir}/berth
    install -m 0644 ${S}/README.md ${D}${docdir}/berth/README.md
}

FILES:${PN} += "${systemd_system_unitdir}/berthd.service ${localstatedir}/lib/berth"
CONFFILES:${PN} = "${sysconfdir}/berth/berthd.toml ${sysconfdir}/berth/rules.toml ${sysconfdir}/berth/board.toml"

# ca-certificates: HTTPS registries are trusted through the system CA bundle.
RDEPENDS:${PN} += "ca-certificates iproute2"
RRECOMMENDS:${PN} += "nftables"
