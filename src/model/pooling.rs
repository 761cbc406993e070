//! Classification heads: bilinear attention pooling (paper Eq. 1–2, WS-DAN's BAP; spec §1.3)
//! and the GAP/GMP baselines of Table 6.
use tch::{Kind, Tensor};

/// Bilinear attention pooling: `FM[b, m, c] = mean_{h,w} A[b,m,h,w] · f[b,c,h,w]`, flattened
/// m-major to `[B, M·C]`, then signed square root `sign(v)·sqrt(|v| + 1e-12)` and L2
/// normalisation (as the authors' code; the paper only describes the pooling). Computed in
/// float32 even under bf16 autocast.
pub fn bilinear_attention_pool(features: &Tensor, attention: &Tensor) -> Tensor {
    let (b, c, h, w) = features.size4().expect("features [B, C, H, W]");
    let m = attention.size()[1];
    let f = features.to_kind(Kind::Float).reshape([b, c, h * w]); // [B, C, HW]
    let a = attention.to_kind(Kind::Float).reshape([b, m, h * w]); // [B, M, HW]
    let fm = a.matmul(&f.transpose(1, 2)) / (h * w) as f64; // [B, M, C]
    let v = fm.reshape([b, m * c]); // [B, M*C], index m*C + c
    let v = v.sign() * (v.abs() + 1e-12).sqrt();
    let norm = v.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12); // F.normalize
    v / norm
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(features: &Tensor) -> Tensor {
    features.mean_dim(&[2i64, 3][..], false, None)
}

/// Global max pooling `[B, C, H, W] -> [B, C]`.
pub fn global_max_pool(features: &Tensor) -> Tensor {
    features.amax([2i64, 3], false)
}
