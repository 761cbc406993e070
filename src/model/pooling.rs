//! Classification heads: bilinear attention pooling (paper Eq. 1–2, WS-DAN's BAP; spec §1.3)
//! and the GAP/GMP baselines of Table 6.
use tch::{Kind, Tensor};

/// Bilinear attention pooling: `FM[b, m, c] = mean_{h,w} A[b,m,h,w] · f[b,c,h,w]`, flattened
/// m-major to `[B, M·C]`, then signed square root `sign(v)·sqrt(|v| + 1e-12)` and L2
/// normalisation (as the authors' code; the paper only describes the pooling). As the
/// reference (`bench_magsd_torch.py`: `einsum(...) / (h·w)`, then `.float()`), the pooling runs
/// in its inputs' precision (bf16 under autocast, which casts the matmul) and everything after
/// it, the signed square root and the normalisation, in float32.
pub fn bilinear_attention_pool(features: &Tensor, attention: &Tensor) -> Tensor {
    let (b, c, h, w) = features.size4().expect("features [B, C, H, W]");
    let m = attention.size()[1];
    // Outside autocast, inputs of two precisions meet in float32.
    let (features, attention) = if features.kind() == attention.kind() {
        (features.shallow_clone(), attention.shallow_clone())
    } else {
        (features.to_kind(Kind::Float), attention.to_kind(Kind::Float))
    };
    let f = features.reshape([b, c, h * w]); // [B, C, HW]
    let a = attention.reshape([b, m, h * w]); // [B, M, HW]
    let fm = a.matmul(&f.transpose(1, 2)) / (h * w) as f64; // [B, M, C]
    let v = fm.reshape([b, m * c]).to_kind(Kind::Float); // [B, M*C], index m*C + c
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The dtype path without CUDA: bf16 inputs (what autocast hands the matmul) are pooled in
    /// bf16 and post-processed in float32, exactly as the reference's `einsum(...).float()`.
    #[test]
    fn bap_pools_in_its_inputs_precision_and_post_processes_in_float32() {
        let opts = (Kind::Float, Device::Cpu);
        let f = Tensor::randn([2, 3, 4, 4], opts).to_kind(Kind::BFloat16);
        let a = Tensor::rand([2, 2, 4, 4], opts).to_kind(Kind::BFloat16);
        let out = bilinear_attention_pool(&f, &a);
        assert_eq!(out.kind(), Kind::Float);
        let fm = (a.reshape([2, 2, 16]).matmul(&f.reshape([2, 3, 16]).transpose(1, 2)) / 16.0).reshape([2, 6]).to_kind(Kind::Float);
        let v = fm.sign() * (fm.abs() + 1e-12).sqrt();
        let want = &v / v.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
        assert!(out.equal(&want), "max difference {}", (&out - &want).abs().max().double_value(&[]));
    }
}
