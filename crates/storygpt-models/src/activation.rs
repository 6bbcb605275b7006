//! Activation functions named as in Hugging Face configs (`hidden_act`).

use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// An activation selected by a config's `hidden_act` / `activation_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · σ(1.702 x)`: CLIP ViT-B/L text and vision towers.
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// ReLU (OPT).
    Relu,
    /// SiLU / swish (Llama's SwiGLU gate).
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Gelu => activation::gelu(x),
            Self::GeluNew => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storygpt_core::backend::{DefaultBackend as TB, default_device};

    #[test]
    fn names_and_values_match_pytorch() {
        let parse = |s: &str| serde_json::from_str::<Activation>(&format!("\"{s}\"")).unwrap();
        assert_eq!(parse("quick_gelu"), Activation::QuickGelu);
        assert_eq!(parse("gelu_pytorch_tanh"), Activation::GeluNew);
        assert_eq!(parse("relu"), Activation::Relu);
        // x · σ(1.702 x) at x = 1: 1 / (1 + e^-1.702) = 0.8457958
        let x = Tensor::<TB, 1>::from_floats([1.0, -2.0], &default_device());
        let y: Vec<f32> = Activation::QuickGelu
            .forward(x)
            .into_data()
            .to_vec()
            .unwrap();
        assert!((y[0] - 0.845_795_8).abs() < 1e-6, "{y:?}");
        assert!(
            (y[1] - (-2.0 / (1.0 + (3.404f32).exp()))).abs() < 1e-6,
            "{y:?}"
        );
    }
}
