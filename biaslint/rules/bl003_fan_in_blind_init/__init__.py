"""BL003: weights drawn at a scale that ignores fan-in, so activations explode or vanish."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class FanInBlindInit(Rule):
    code = "BL003"
    name = "fan-in-blind-init"
    severity = Severity.WARNING
    summary = "Weights drawn at a scale that ignores fan-in, so activations explode or vanish"
    what_it_does = """\
For every weight with a fan-in (`Linear`, `ConvNd`, `ConvTransposeNd`, RNN weights, `Bilinear`
on its own) it computes the layer's gain `g = rms(W) * sqrt(fan_in)`: the factor by which the
layer multiplies the scale (root mean square) of an input with uncorrelated entries. It
compares `g` with the gain that keeps the scale through whatever consumes the output
(`nn.init.calculate_gain`): sqrt(2) before ReLU (He et al., 2015), 5/3 before tanh, 1 before
sigmoid, SELU (LeCun init, Klambauer et al., 2017) and identity; GELU, SiLU, ELU and Mish are
treated like ReLU.

* **Chains** (error): along a chain of layers joined only by activations, dropout, reshapes and
  scalar scaling, with no normalization, residual sum, pooling or concatenation in between, the
  rule predicts the scale (root mean square over all entries) of the activations layer by layer,
  starting from unit-scale input into the chain's first layer: what the forward does before that
  layer (`x / 255`, `(x - mean) / std` with fixed statistics) sets the input's scale, not the
  init's growth. Each layer multiplies the second moment by `g^2` and adds its bias's mean
  square; each activation's exact effect on a Gaussian input is computed by
  quadrature (1/2 of the second moment for ReLU, He et al., 2015). A chain whose output grows
  above `max_growth` (100x), or whose activations entering its last layer shrink below
  `min_growth` (1/100), is an **error**. The last layer's own output is left out of the vanishing
  test: a small read-out is often deliberate (a classifier head, the last layer of a residual
  branch, GPT-2's 1/sqrt(2 n_layer) scaling). A chain whose output is normalized right away
  (BatchNorm, LayerNorm, GroupNorm...) only changes how fast its layers learn: **info**, and only
  when it explodes. A chain also continues through max pooling of non-negative activations
  (after ReLU): the max of non-negative values is at least their root mean square, so the growth
  predicted through the pooling is a lower bound, for explosion; a vanishing chain across max
  pooling is claimed only where the example inputs measure it (never on the meta device). For
  vanishing, a chain continues through average pooling (and a mean over axes), which can only
  lower the scale: the scale predicted through it is an upper bound. A chain that the
  forward's own constants between its layers (`h / 1000`) push out of the band even at the gains
  the fix writes is not blamed on the init, unless the init's share (the growth over that
  growth) leaves the band by itself.
* **Measured** (when the target has example inputs and real weights, i.e. not `--device meta`):
  each chain claim is checked on the example inputs with forward hooks in the one real forward
  the rules share (no gradients, the model left as it was): the rms of the last layer's output
  (of its input, for vanishing) over the rms of the first layer's input, at the chain's own call
  of each layer, and the same ratio layer by layer. The measurement decides: a claim whose
  measured scale does not leave the band the same way is not reported, and is counted as a
  disagreement between analysis and measurement (`rules.BL003.disagreements` in the json). The
  message gives the measured growth and the prediction; without a forward it says the claim was
  predicted, not measured, and why.
* **Single layers** (warning): a layer whose gain is more than `max_gain_ratio` (10) times the
  target multiplies the scale of uncorrelated unit-scale inputs by that much on its own
  (saturating a tanh, blowing up logits). This is a fact about the weight alone (for such
  inputs the expected mean square of `Wx` is exactly `g^2`, whatever `W`), so it is not
  measured.
  A single layer that is too *small* is not flagged alone: a rescaling by one layer is absorbed
  by the next bias, norm or optimizer step; it is the product over a chain that vanishes.
* **Expert weights** (warning) stored as 3-d parameters (a mixture of experts' `gate_up_proj` /
  `down_proj`, or a hand-written `(experts, in, out)` tensor): the same single-layer test, with
  each expert's own fan-in. Which axis that is is read from the products the forward contracts
  the weight with (`F.linear` of `w[e]` and transformers' `(experts, out, in)`: the last axis;
  `torch.bmm(x, w)` and `(experts, in, out)`: the middle one; a grouped matmul of a transpose;
  an einsum), never from the shape alone. The target is the activation's when one takes the
  product, else tanh's 5/3, the largest any activation needs. So experts drawn with
  `initializer_range` 0.02, as LLM configs do, pass exactly as a 2-d `Linear` drawn so does. An
  expert weight whose products the graph does not show is listed as not judged, with the reason.
  They are not part of chains.
* **Weights the forward contracts itself** (warning): a raw `nn.Parameter` used with `F.linear`,
  `x @ w`, `torch.matmul` or an einsum, an `nn.Linear`'s weight given to `F.linear` (MAML-style
  code), a raw kernel given to `F.conv1d`/`conv2d`/`conv3d`. The same single-layer test, with
  the fan-in the product contracts (read from the graph, through transposes) and the constants
  the forward scales the weight or the product by (`w * c`, equalized learning rate; `q @ k.T *
  d ** -0.5`). A product that goes into `sin`/`cos` (random Fourier features) is not judged by
  fan-in: its scale is a frequency. A weight the forward transforms with ops this reading does
  not follow before the product (a weight standardization) is listed as not judged, with the
  reason. They are not part of chains.
* Embedding tables are never flagged: a lookup sums nothing, so N(0, 1) is standard.

The message quotes the init call (e.g. `Tensor.normal_(...)` with std 1) and its line when your
code set the weight.
"""
    why_bad = """\
A layer sums `fan_in` products, so weights of a fixed std (say `normal_(w)` with std 1, or 0.01
everywhere) multiply the activation scale by `std * sqrt(fan_in)`: 22x for std 1 at width 512,
0.08x for std 0.01 at width 64. Stacked without normalization these factors multiply: four such
layers change the scale by 10^5 or 10^-5, so the output saturates, the loss starts at a huge
value or the gradients vanish, and a learning rate tuned for one layer is wrong for the next.
He and Xavier init pick the std from the fan-in precisely to keep the factor at 1 after the
activation.

Threshold sources. The chain band [1e-2, 1e2] (two orders of magnitude of activation scale)
is the one the issue set for errors; PyTorch's default init (std 1/sqrt(3 fan_in), gain 0.58,
0.41x the ReLU target per layer) shrinks a bias-free ReLU MLP below 1e-2 only after 6 layers,
and with its default bias (std 1/sqrt(3 fan_in)) the scale settles on a floor of about
sqrt(0.4 / width) instead: above 1e-2 at any depth up to width 2048. Measured margins over every
torchvision classification model at `weights=None`: the smallest predicted hidden scale is 0.019
(Swin V2's relative-position MLP, a 2-input Linear at std 0.02), then 0.08 (MaxViT) and 0.10
(ConvNeXt, std 0.02 at width 96); the largest chain growth is 4.5x (Inception v3's classifier at
std 0.1). The per-layer limit 10x over the target leaves a 1.6x margin above the largest
torchvision gain ratio (6.4, an Inception v3 conv at std 0.1 followed by BatchNorm) and 2x
above the largest one not followed by a norm (4.9, an EfficientNet squeeze-excitation conv).
GPT/BERT's N(0, 0.02) at width 256 has gain 0.32: it is never too large, and a chain of them
stays well above 1e-2.
"""
    fix_text = """\
Initialize the weight for the activation that follows it:
`nn.init.kaiming_normal_(w, nonlinearity='relu')` (std sqrt(2 / fan_in)) before ReLU-family
activations, `nonlinearity='tanh'` (std 5/3 / sqrt(fan_in)) before tanh, `'linear'` before
identity, sigmoid or SELU; `nn.init.xavier_normal_` is a fine alternative for tanh and sigmoid.
The message gives the target std; or keep PyTorch's default init.
"""
    references = (
        "He et al., 2015, Delving Deep into Rectifiers, https://arxiv.org/abs/1502.01852",
        "Glorot and Bengio, 2010, Understanding the difficulty of training deep feedforward "
        "neural networks, https://proceedings.mlr.press/v9/glorot10a.html",
        "Klambauer et al., 2017, Self-Normalizing Neural Networks, https://arxiv.org/abs/1706.02515",
        "torch.nn.init.calculate_gain, https://pytorch.org/docs/stable/nn.init.html",
        "Radford et al., 2019, GPT-2 (residual projections scaled by 1/sqrt(N))",
    )
    options = (
        Option("max_growth", 100.0, "Error when a chain's activation scale (measured on the "
                                    "example inputs, else predicted) grows above this factor."),
        Option("min_growth", 0.01, "Error when a chain's activation scale (measured on the "
                                   "example inputs, else predicted) shrinks below this factor."),
        Option("max_gain_ratio", 10.0, "Warn when one layer's gain is this many times above "
                                       "the variance-preserving gain."),
    )
    bad_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    for layer in (model[0], model[2], model[4]):
        layer.weight.data.normal_()  # std 1, whatever the fan-in: 16x per layer at width 256
    return model
'''
    good_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    for layer in (model[0], model[2]):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model
'''

    # Growth claims are derived from the weights alone (so they stand on the meta device and
    # without inputs) and checked on the real forward when there is one.
    reads = frozenset({"graph", "values", "measure"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        # Every layer with a weight matrix or kernel: the scale chains run through them.
        return [layer for layer in model.layers.values()
                if any(p.dim() >= 2 for p in layer.parameters().values())]

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        from biaslint.analysis.experts import expert_weights
        from biaslint.analysis.matrices import matrix_weights

        declined = {w.layer.name: f"its weight {w.pname}: {w.why}"
                    for w in matrix_weights(model) if not w.read}
        declined.update({w.layer.name: f"its 3-d expert weight {w.pname}: {w.why}"
                         for w in expert_weights(model) if not w.read})
        return declined

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        from biaslint.rules.bl003_fan_in_blind_init.check import forward_needs

        return forward_needs(self, model, context), False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.rules.bl003_fan_in_blind_init.check import check

        return check(self, model, context)
