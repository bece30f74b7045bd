//! Run-time choice between an AVX2+FMA build of a kernel and the baseline
//! build. The kernels are generic over `const FMA: bool` and written in safe
//! Rust; the only unsafe step is calling the AVX2 build after checking that
//! the CPU has those features.

/// `dispatch!(name => generic(arg: Ty, ...))` defines `fn name(args)` that
/// calls `generic::<true>` compiled with AVX2+FMA when the CPU supports them,
/// and `generic::<false>` otherwise.
macro_rules! dispatch {
    ($vis:vis $name:ident => $generic:ident ( $($arg:ident : $ty:ty),* )) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    $generic::<true>($($arg),*)
                }
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe { fast($($arg),*) };
            }
            $generic::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `acc + a * b`, fused when the build has FMA.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}
