#!/usr/bin/env bash
# Writes two folders of out-of-distribution images for `magsd ood-eval` and the OOD tests, from
# sample images that PyPI packages ship inside their wheels (no other download):
#   OUT/natural/    scikit-image's photographs (astronaut, camera, coffee, rocket, ...), each whole
#                   and as its four quadrants and its centre (Pillow crops), as PNG
#   OUT/non-chest/  non-chest medical images: pydicom's CT, MR and liver test files (uncompressed
#                   DICOM) and scikit-image's retina, microaneurysm (fundus), IHC and cell images
# The packages go into a venv of their own (~/.cache/magsd/venv-ood, pinned versions, idempotent);
# scikit-image and pydicom are installed without their dependencies, since only their data files
# are read. Usage: scripts/ood-images.sh OUT
set -euo pipefail
out="${1:?usage: scripts/ood-images.sh OUT}"
venv="${MAGSD_OOD_VENV:-$HOME/.cache/magsd/venv-ood}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import PIL" 2>/dev/null \
    || [ ! -d "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/skimage/data" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv python3-pip >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check pillow==12.1.0
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps scikit-image==0.26.0 pydicom==3.0.2
fi
mkdir -p "$out/natural" "$out/non-chest"
"$venv/bin/python" - "$out" <<'EOF'
import os, shutil, sys, sysconfig
from PIL import Image
out = sys.argv[1]
site = sysconfig.get_paths()["purelib"]
sk = os.path.join(site, "skimage", "data")
dcm = os.path.join(site, "pydicom", "data", "test_files")
natural = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png",
           "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "logo.png", "moon.png",
           "motorcycle_left.png", "page.png", "rocket.jpg", "text.png"]
def whole_and_crops(src, dst_dir, stem):
    img = Image.open(src)
    img.load()
    img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "RGBA", "LA") else img
    w, h = img.size
    boxes = {"whole": (0, 0, w, h), "tl": (0, 0, w // 2, h // 2), "tr": (w // 2, 0, w, h // 2),
             "bl": (0, h // 2, w // 2, h), "br": (w // 2, h // 2, w, h), "centre": (w // 4, h // 4, 3 * w // 4, 3 * h // 4)}
    for name, box in boxes.items():
        img.crop(box).save(os.path.join(dst_dir, f"{stem}-{name}.png"))
for f in natural:
    whole_and_crops(os.path.join(sk, f), os.path.join(out, "natural"), os.path.splitext(f)[0])
for f in ["retina.jpg", "microaneurysms.png", "ihc.png", "cell.png"]:
    whole_and_crops(os.path.join(sk, f), os.path.join(out, "non-chest"), os.path.splitext(f)[0])
dicoms = ["CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "emri_small.dcm"]
for sub in ["77654033/CT2", "98892001/CT2N", "98892001/CT5N", "98892003/MR1", "98892003/MR2", "98892003/MR700"]:
    d = os.path.join(dcm, "dicomdirtests", sub)
    if os.path.isdir(d):
        dicoms += [os.path.join("dicomdirtests", sub, f) for f in sorted(os.listdir(d))]
n = 0
for f in dicoms:
    src = os.path.join(dcm, f)
    if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(out, "non-chest", f.replace("/", "_") + ("" if f.endswith(".dcm") else ".dcm")))
        n += 1
print(f"{len(os.listdir(os.path.join(out, 'natural')))} natural, {len(os.listdir(os.path.join(out, 'non-chest')))} non-chest images in {out}")
EOF
