#!/usr/bin/env python3
"""pydicom's decoding of DICOM files, as the gray image magsd must produce (tests/decode_dicom.rs).

    pydicom_reference.py OUT_DIR FILE_OR_DIR...

For every DICOM file (folders are searched recursively) this writes OUT_DIR/NNNN.gray (the
gray image, little-endian uint8 or uint16, row-major) and one line of OUT_DIR/manifest.jsonl:
{"path", "status": "ok" | "refused" | "no-pixel-data" | "not-dicom", "error", "width",
"height", "depth" (8 or 16), "frames", "photometric", "transfer_syntax", "steps"}.

The pipeline is pydicom's own, frame 0 only:
  ds.pixel_array (pydicom's default options: unused bits corrected, YBR_FULL and YBR_FULL_422
  converted to RGB)
  * PALETTE COLOR: pydicom.pixels.apply_color_lut, then colour to gray as below.
  * colour (3 samples): gray = 0.299 R + 0.587 G + 0.114 B; 8-bit samples in OpenCV's 14-bit
    fixed point (as magsd does for PNG), deeper samples in float64, scaled from the stored
    range 0..2^bits-1 to 0..65535.
  * monochrome: pydicom.pixels.apply_modality_lut, then apply_voi_lut(index=0) (a VOI LUT
    sequence before a window, as pydicom prefers), then the output range of the last step
    that ran mapped linearly to 0..top, top = 255 for at most 8 bits and 65535 otherwise:
      VOI LUT: 0..2^(LUT bits)-1; window or rescale: pydicom's own y_min..y_max from Bits
      Stored, Pixel Representation and the rescale (apply_windowing's formula); Modality LUT
      alone: 0..2^(LUT bits)-1; nothing: the stored range.
    MONOCHROME1 is inverted (top - v).
  Enhanced multi-frame objects keep the rescale and window of each frame in the Shared and
  Per-frame Functional Groups, which pydicom 3.0's apply_modality_lut / apply_voi_lut do not
  read: for them this script copies frame 0's Pixel Value Transformation and Frame VOI LUT
  (per-frame first, else shared) to the top level before calling them.
"""
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def luma(rgb, bits):
    """BT.601 luma of an RGB array with samples of `bits` bits."""
    if bits <= 8:
        r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
        return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8), 8
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    top = float(2**bits - 1)
    return np.clip(np.floor(y * 65535.0 / top + 0.5), 0, 65535).astype(np.uint16), 16


def functional_group(ds, keyword):
    """Frame 0's item of a functional group macro: per-frame first, else shared."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(seq)
        if groups and keyword in groups[0] and groups[0][keyword].value:
            return groups[0][keyword][0]
    return None


def flatten_functional_groups(ds, steps):
    pvt = functional_group(ds, "PixelValueTransformationSequence")
    if pvt is not None and "RescaleSlope" in pvt and "RescaleIntercept" in pvt:
        ds.RescaleSlope, ds.RescaleIntercept = pvt.RescaleSlope, pvt.RescaleIntercept
        steps.append("functional-groups-rescale")
    voi = functional_group(ds, "FrameVOILUTSequence")
    if voi is not None and "WindowCenter" in voi and "WindowWidth" in voi:
        ds.WindowCenter, ds.WindowWidth = voi.WindowCenter, voi.WindowWidth
        if "VOILUTFunction" in voi:
            ds.VOILUTFunction = voi.VOILUTFunction
        steps.append("functional-groups-window")


def stored_range(ds):
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def monochrome(arr, ds, steps):
    bits = int(ds.BitsStored)
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        flatten_functional_groups(ds, steps)
    lo, hi = stored_range(ds)
    depth = bits
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**depth - 1)
        steps.append("modality-lut")
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * s + i, hi * s + i
        steps.append("rescale")
    arr = apply_modality_lut(arr, ds)
    voi_lut = bool(ds.get("VOILUTSequence")) and None not in (
        ds.VOILUTSequence[0].get("LUTDescriptor"),
        ds.VOILUTSequence[0].get("LUTData"),
    )
    window = None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))
    if voi_lut:
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**depth - 1)
        steps.append("voi-lut")
    elif window:
        steps.append("window")
    arr = apply_voi_lut(arr, ds, index=0)
    top = 255.0 if depth <= 8 else 65535.0
    span = max(hi - lo, np.finfo(np.float64).eps)
    t = (arr.astype(np.float64) - lo) / span * top
    out = np.clip(np.floor(t + 0.5), 0.0, top)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = top - out
        steps.append("inverted")
    return out.astype(np.uint8 if top == 255.0 else np.uint16), (8 if top == 255.0 else 16)


def reference(path):
    rec = {"path": path}
    try:
        ds = pydicom.dcmread(path, force=False)
    except Exception as e:  # noqa: BLE001 - any reader error is "not DICOM" here
        rec.update(status="not-dicom", error=f"{type(e).__name__}: {e}")
        return rec, None
    rec["transfer_syntax"] = str(getattr(ds.get("file_meta", {}), "TransferSyntaxUID", ""))
    rec["photometric"] = str(ds.get("PhotometricInterpretation", ""))
    if "PixelData" not in ds:
        rec["status"] = "no-pixel-data"
        return rec, None
    steps = []
    try:
        ds.pixel_array_options(index=0)
        arr = ds.pixel_array
        rec["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
        pi = ds.PhotometricInterpretation
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)
            steps.append("palette")
            gray, depth = luma(rgb[..., :3], rgb.dtype.itemsize * 8)
        elif arr.ndim == 3:
            # pydicom returns RGB for RGB, YBR_FULL and YBR_FULL_422 (as_rgb=True).
            bits = int(ds.BitsStored) if arr.dtype.itemsize > 1 else 8
            gray, depth = luma(arr, bits)
            steps.append("luma")
        else:
            gray, depth = monochrome(arr, ds, steps)
    except Exception as e:  # noqa: BLE001 - pydicom's refusal, recorded as such
        rec.update(status="refused", error=f"{type(e).__name__}: {e}")
        return rec, None
    rec.update(status="ok", width=int(gray.shape[1]), height=int(gray.shape[0]), depth=depth, steps=steps)
    return rec, gray


def files(args):
    for a in args:
        if os.path.isdir(a):
            for root, _, names in sorted(os.walk(a)):
                for n in sorted(names):
                    yield os.path.join(root, n)
        else:
            yield a


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "manifest.jsonl"), "w") as m:
        for k, path in enumerate(files(sys.argv[2:])):
            rec, gray = reference(path)
            if rec["status"] == "not-dicom":
                continue
            if gray is not None:
                rec["gray"] = f"{k:04}.gray"
                np.ascontiguousarray(gray).astype(gray.dtype.newbyteorder("<")).tofile(os.path.join(out, rec["gray"]))
            m.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
