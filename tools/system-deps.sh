#!/usr/bin/env bash
# Install the system tools the test suite (or the benchmarks) use, when they are missing.
# Usage: tools/system-deps.sh test|bench. Needs root and apt-get to install; otherwise it
# says what is missing and the tests that need it fail with a clear message.
set -euo pipefail

declare -A package_of=(
  [mkfs.ext4]=e2fsprogs [mount]=mount [losetup]=mount [systemd-analyze]=systemd
  [ffmpeg]=ffmpeg [fusermount3]=fuse3 [mosquitto]=mosquitto [gcc]=gcc
  [chromium]=chromium [chromedriver]=chromium-driver [cvlc]=vlc-bin
)
# Packages wanted as such (no command to look for): Debian's own Python with venv, numpy and
# h5py, for the check that vigil installs beside a system numpy the way it does on Raspberry
# Pi OS (tests/e2e/test_debian_python.py). h5py is the canary: Debian compiles it against
# python3-numpy's C API, as Raspberry Pi OS compiles simplejpeg for picamera2.
# mosquitto (with mosquitto_passwd in the same package) is the broker tests/e2e/test_mqtt.py starts.
# chromium and chromium-driver: the headless browser tests/e2e/test_web_page.py drives over the
# DevTools protocol (chromedriver comes along so the browser and its driver stay one version).
# vlc-bin (cvlc) and vlc-plugin-base (its HLS, MP4 and libavformat modules): VLC 3.0, which
# tests/e2e/test_vlc.py plays the playlists with. Without their recommends (the Qt interface,
# video outputs, a sound server): a headless copy into a file needs none of them.
without_recommends=(vlc-bin vlc-plugin-base)
packages=()
case "${1:-test}" in
  test) tools=(mkfs.ext4 mount losetup systemd-analyze fusermount3 ffmpeg mosquitto gcc chromium chromedriver
              cvlc)
        # libcap-dev: python-prctl, which the genuine picamera2 imports, builds against it
        # (tests/requirements-picamera2.txt).
        packages=(python3 python3-venv python3-numpy python3-h5py libcap-dev vlc-plugin-base) ;;
  bench) tools=(ffmpeg) ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac

missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 \
    || missing+=("${package_of[$tool]}")
done
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${missing[*]} (install them; tests that need them will fail)" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}"
lean=() full=()
for package in "${missing[@]}"; do
  if [[ " ${without_recommends[*]} " == *" $package "* ]]; then lean+=("$package"); else full+=("$package"); fi
done
apt-get update -qq
[ ${#full[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${full[@]}" >/dev/null
[ ${#lean[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${lean[@]}" >/dev/null
