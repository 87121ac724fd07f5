SUMMARY = "Example gateway image with the Berth agent"
DESCRIPTION = "A small systemd image that boots into berthd. A starting \
               point for product images: copy the IMAGE_INSTALL line into \
               your own image."
BUGTRACKER = "https://example.invalid/berth/issues"
SECTION = "admin"
LICENSE = "MIT"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd"

IMAGE_INSTALL = "packagegroup-core-boot packagegroup-berth ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_FEATURES += "ssh-server-dropbear"
IMAGE_LINGUAS = ""

# Room for image layers and jail roots under /var/lib/berth (in KiB).
IMAGE_ROOTFS_EXTRA_SPACE = "524288"
