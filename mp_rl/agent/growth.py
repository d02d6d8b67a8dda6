"""The network that grows while it trains: wider (or narrower) layers with the learned weights carried over.

**Growth preserves the function exactly** (the ReDo rule, not Net2Net's noisy split). A layer's kept
units come first, in their old order, with their old weights; new units follow with fresh incoming
weights (the layer's own initialisation) and **zero outgoing weights**: every weight from a new unit
into a kept unit of the next layer, or into the head, is 0. The kept units therefore compute exactly
what they did, the new ones contribute nothing until training moves their outgoing weights, and the
Q-values before and after are equal to floating-point rounding. Channels of a CNN grow the same way;
where a convolution's channels are flattened into a linear layer, channel c's `H*W` features are one
contiguous run (channel-major), so kept channels stay a prefix there too.

**Shrinking** keeps the units with the largest contribution, measured as the L2 norm of each unit's
outgoing weights (all of them: the next layer's, or the head's). It changes the function; the
caller reports by how much (`q_change`).

**IQN's fraction embedding** (`agent.iqn`) multiplies into the features its network's last hidden
layer reads; its outputs are those features, so it keeps exactly the units that layer keeps as
inputs: a new feature times its new embedding meets only zero weights.

**Adam** moves the same way: kept entries keep their moments, new ones start at zero, the step count
is kept. The target network is transferred with the same keeps as the online one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mp_rl.agent.iqn import ImplicitQuantiles
from mp_rl.agent.models import DuelingHead, q_values

if TYPE_CHECKING:
    from mp_rl.config import LearnerConfig


def arch_code(lc: LearnerConfig) -> tuple[int, ...]:
    """A network's widths as the integers the weight board carries with its weights: `cnn_scale` in
    thousandths, then the hidden sizes. The learner publishes it; actors rebuild from it (`with_arch`)."""
    return (round(lc.cnn_scale * 1000), *lc.hidden)


def with_arch(lc: LearnerConfig, code: tuple[int, ...]) -> LearnerConfig:
    """`lc` with the widths `arch_code` gave."""
    return lc.model_copy(update={"cnn_scale": code[0] / 1000, "hidden": tuple(code[1:])})


UNITS, SCALES = (16, 2048), (0.25, 4.0)  # a grown or shrunk layer's bounds (the planner's)


def at_width(lc: LearnerConfig, percent: int) -> LearnerConfig:
    """`lc` with every width at `percent` of its own, within the bounds (never past a start outside them).

    >>> from mp_rl.config import LearnerConfig
    >>> lc = LearnerConfig(hidden=(16, 100))
    >>> at_width(lc, 400).hidden, at_width(lc, 50).hidden, at_width(lc, 100).hidden
    ((64, 400), (16, 50), (16, 100))
    """
    hidden = tuple(min(max(round(h * percent / 100), min(h, UNITS[0])), max(h, UNITS[1])) for h in lc.hidden)
    s = lc.cnn_scale
    scale = min(max(s * percent / 100, min(s, SCALES[0])), max(s, SCALES[1]))
    return lc.model_copy(update={"hidden": hidden, "cnn_scale": scale})


def saved_widths(lc: LearnerConfig, state: dict) -> LearnerConfig:
    """`lc` with the widths a checkpoint recorded: a network that grew is rebuilt at its grown size."""
    saved = (state.get("config") or {}).get("learner") or {}
    update = {}
    if isinstance(saved.get("hidden"), list) and all(isinstance(h, int) for h in saved["hidden"]):
        update["hidden"] = tuple(saved["hidden"])
    if isinstance(saved.get("cnn_scale"), (int, float)) and not isinstance(saved["cnn_scale"], bool):
        update["cnn_scale"] = float(saved["cnn_scale"])
    return lc.model_copy(update=update)


@dataclass(frozen=True)
class Layer:
    """One weight layer of a pair of networks: which old output units it keeps (the first `len(keep_out)`
    outputs of the new layer), and which old inputs feed its kept inputs (the first `len(keep_in)`)."""

    old: nn.Module
    new: nn.Module
    keep_out: torch.Tensor
    keep_in: torch.Tensor


def _body(net: nn.Module) -> list[nn.Module]:
    """The modules from the first layer to the head: `models.build_q_network`'s Sequential(Prep,
    Sequential(..., head)), or IQN's torso and post joined (its embedding aside, `_gate`)."""
    return [*net.torso, *net.post] if isinstance(net, ImplicitQuantiles) else list(net[-1])


def weight_layers(net: nn.Module) -> tuple[list[nn.Module], list[nn.Linear]]:
    """The trunk's Conv2d / Linear layers in order, and the head's Linear layers (each reads the trunk's
    last output)."""
    body = _body(net)
    head = body[-1]
    trunk = [m for part in body[:-1] for m in part.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    heads = [head.value, head.advantage] if isinstance(head, DuelingHead) else [head]
    return trunk, heads


def _gate(net: nn.Module) -> tuple[nn.Linear, int] | None:
    """IQN's embedding and the index in the trunk of the layer whose inputs it gates; None for others."""
    if not isinstance(net, ImplicitQuantiles):
        return None
    return net.embed, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for part in net.torso for m in part.modules())


def _all_layers(net: nn.Module) -> list[nn.Module]:
    """Every weight layer in the order `plan` lists them: trunk, head(s), then IQN's embedding."""
    trunk, heads = weight_layers(net)
    gate = _gate(net)
    return trunk + heads + ([gate[0]] if gate else [])


def _contribution(trunk: list[nn.Module], heads: list[nn.Linear], i: int) -> torch.Tensor:
    """Each output unit of trunk layer `i`: the L2 norm of its outgoing weights (next layer or head)."""
    readers = [trunk[i + 1]] if i + 1 < len(trunk) else heads
    units = trunk[i].weight.shape[0]
    total = torch.zeros(units)
    for r in readers:
        w = r.weight.detach().float().cpu()
        w = w.reshape(w.shape[0], units, -1) if w.dim() == 2 else w  # flattened channels: (out, C, H*W)
        total += w.transpose(0, 1).reshape(units, -1).pow(2).sum(dim=1)
    return total.sqrt()


def plan(old: nn.Module, new: nn.Module) -> list[Layer]:
    """The layer-by-layer transfer from `old` to `new` (same kind and depth, any widths): the largest-
    contribution units are kept where a layer narrows, all of them where it widens."""
    (old_trunk, old_heads), (new_trunk, new_heads) = weight_layers(old), weight_layers(new)
    if len(old_trunk) != len(new_trunk) or len(old_heads) != len(new_heads):
        raise ValueError("growth changes widths only: the networks differ in depth or head")
    layers, keep_in, units_in = [], None, None
    for i, (o, n) in enumerate(zip(old_trunk, new_trunk, strict=True)):
        units, room = o.weight.shape[0], n.weight.shape[0]
        if room >= units:
            keep = torch.arange(units)
        else:  # narrower: the strongest units, in their old order
            keep = torch.sort(torch.topk(_contribution(old_trunk, old_heads, i), room).indices).values
        layers.append(Layer(o, n, keep, _inputs(o, keep_in, units_in)))
        keep_in, units_in = keep, units
    for o, n in zip(old_heads, new_heads, strict=True):
        layers.append(Layer(o, n, torch.arange(o.weight.shape[0]), _inputs(o, keep_in, units_in)))
    gate = _gate(old)
    if gate is not None:  # its outputs are the gated layer's inputs: the same keeps
        embed, at = gate
        layers.append(Layer(embed, _gate(new)[0], layers[at].keep_in, torch.arange(embed.weight.shape[1])))
    return layers


def plan_like(layers: list[Layer], old: nn.Module, new: nn.Module) -> list[Layer]:
    """The same keeps for another pair of networks of the same widths (the target network's)."""
    pairs = zip(_all_layers(old), _all_layers(new), layers, strict=True)
    return [Layer(o, n, layer.keep_out, layer.keep_in) for o, n, layer in pairs]


def _inputs(layer: nn.Module, keep: torch.Tensor | None, units: int | None) -> torch.Tensor:
    """The old inputs of `layer` its kept inputs come from, given the previous layer's kept units (of
    `units`): all of them for the first layer; where channels were flattened, each kept channel's run."""
    width = layer.weight.shape[1]
    if keep is None:
        return torch.arange(width)
    per = width // units  # 1, or the H*W features of each flattened channel
    return (keep[:, None] * per + torch.arange(per)).reshape(-1)


def _moved(old: torch.Tensor, fill: torch.Tensor, keep_out: torch.Tensor, keep_in: torch.Tensor | None) -> torch.Tensor:
    """`fill` with the old block at its front: rows `keep_out` of `old` (and columns `keep_in`) become the
    first rows (and columns); the rest of the kept rows is zero, the other rows are `fill`'s."""
    out = fill.clone()
    block = old.index_select(0, keep_out.to(old.device))
    if keep_in is None:  # a bias (or its moments)
        out[: len(keep_out)] = block
        return out
    out[: len(keep_out)] = 0  # a kept unit reads nothing from a new unit: new units' outgoing weights are 0
    out[: len(keep_out), : len(keep_in)] = block.index_select(1, keep_in.to(old.device))
    return out


def _pairs(layers: list[Layer]):
    """(old parameter, new parameter, rows kept, columns kept) for every weight and bias."""
    for layer in layers:
        yield layer.old.weight, layer.new.weight, layer.keep_out, layer.keep_in
        if layer.old.bias is not None:
            yield layer.old.bias, layer.new.bias, layer.keep_out, None


@torch.no_grad()
def transfer(old: nn.Module, new: nn.Module, layers: list[Layer] | None = None) -> list[Layer]:
    """Carry `old`'s weights into `new` (freshly initialised, any widths): exact for growth, the
    strongest units for a shrink. Returns the plan, to move the target network and Adam the same way."""
    layers = plan(old, new) if layers is None else layers
    for o, n, rows, cols in _pairs(layers):
        n.copy_(_moved(o.detach(), n.detach(), rows, cols))
    return layers


@torch.no_grad()
def transfer_adam(old_opt: torch.optim.Optimizer, new_opt: torch.optim.Optimizer, layers: list[Layer]) -> None:
    """Adam's moments for the new parameters: kept entries keep theirs, new ones start at zero; the step
    count is kept (its bias correction stays where training had it)."""
    for o, n, rows, cols in _pairs(layers):
        state = old_opt.state.get(o)
        if not state:
            continue
        moved = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == o.shape:
                moved[key] = _moved(value, torch.zeros_like(n), rows, cols)
            else:
                moved[key] = value.clone() if torch.is_tensor(value) else value  # `step`
        new_opt.state[n] = moved


@torch.no_grad()
def q_change(old: nn.Module, new: nn.Module, obs: torch.Tensor) -> float:
    """The largest absolute change in any Q-value over the batch `obs` (0 for an exact growth)."""
    return float((q_values(old(obs)) - q_values(new(obs))).abs().max())


class Copy:
    """A CPU copy of the learner's network that follows the weight board, its layout included: what an
    actor acts with and the evaluator plays with. `sync()` reads newer weights; when the learner's
    network has been resized, the board refuses this layout, and the copy rebuilds for the published
    one and swaps it in only once it holds its weights, so it never holds a mix of two layouts."""

    def __init__(self, spec, lc: LearnerConfig):
        from mp_rl.agent.models import q_network
        from mp_rl.shm.board import flatten_parameters

        self._build, self._flatten = q_network, flatten_parameters
        self.spec, self.lc, self.arch, self.version = spec, lc, arch_code(lc), 0
        self.net = q_network(spec, lc).eval()  # acting only: no training-mode behaviour in a copy
        self.flat = flatten_parameters(self.net)

    def sync(self, board, have: int | None = None) -> int:
        """Read weights newer than `have` (default: those held); the version held afterwards."""
        have = self.version if have is None else have
        self.version = board.read_into(self.flat, have, shape=self.arch)
        latest = board.latest_shape() if hasattr(board, "latest_shape") else ()
        if len(latest) > 1 and latest[1:] != self.arch:
            lc = with_arch(self.lc, latest[1:])
            net = self._build(self.spec, lc).eval()
            flat = self._flatten(net)
            version = board.read_into(flat, 0, shape=latest[1:])
            if version:  # the layout may have moved on meanwhile: keep the old copy until one lands
                self.lc, self.arch, self.net, self.flat, self.version = lc, latest[1:], net, flat, version
        return self.version
