"""Energy-based residual heads on a frozen masked-diffusion denoiser (EDLM; Xu et al., 2024,
"Energy-Based Diffusion Language Models for Text Generation", arXiv:2410.21357).

The corrected denoiser is p(x_0 | x_t) = p_theta(x_0 | x_t) exp(-E(x_0, x_t)) / Z(x_t), with
p_theta the factorised MDM denoiser (carry-over: positions unmasked in x_t are kept) and E one
scalar per sequence. Modules:

- `model`: the `Energy` convention, `EnergyModel`, `denoiser_log_prob`, log Z estimates.
- `autoregressive`: the AR and carry-over AR (coAR, Z = 1 exactly) energies from an AR model.
- `network`: the NCE energy network (the library's backbone reading x_t and x_0).
- `likelihood`: a discrete-step NLL bound of the energy-corrected model beside the MDM's.
"""

from mdm.energy.model import Energy, EnergyApply, EnergyModel, denoiser_log_prob, log_mean_exp, snis_upper

__all__ = ["Energy", "EnergyApply", "EnergyModel", "denoiser_log_prob", "log_mean_exp", "snis_upper"]
