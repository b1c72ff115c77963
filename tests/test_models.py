"""The thesis's networks: shapes, layer layout, initial variance, normalised variants."""

import pytest
import torch
from torch import nn

from sokit import losses, models


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_autoencoder_layout_and_shapes():
    torch.manual_seed(0)
    ae = models.autoencoder()
    sizes = [(l.in_features, l.out_features) for l in linears(ae)]
    assert sizes == list(zip(models.AUTOENCODER_SIZES[:-1], models.AUTOENCODER_SIZES[1:]))
    # linear code layer: the 250->30 Linear is followed directly by the 30->250 Linear
    kinds = [type(m).__name__ for m in ae]
    i = [k for k, m in enumerate(ae) if isinstance(m, nn.Linear) and m.out_features == 30][0]
    assert kinds[i + 1] == "Linear"
    assert kinds[-1] == "Sigmoid" and kinds.count("Sigmoid") == 7
    out = ae(torch.rand(5, 784))
    assert out.shape == (5, 784) and (out > 0).all() and (out < 1).all()


def test_cifar_mlp_shapes():
    net = models.cifar_mlp()
    assert len(linears(net)) == 9
    assert sum(isinstance(m, nn.ReLU) for m in net) == 8
    assert net(torch.randn(3, 3072)).shape == (3, 10)


@pytest.mark.parametrize("prescale", [1.0, 15.0])
def test_init_variance_is_prescale_over_fan_in(prescale):
    torch.manual_seed(1)
    for layer in linears(models.autoencoder(prescale=prescale)):
        w = layer.weight
        expected = prescale / layer.in_features
        # the sample variance of n iid normals has relative std sqrt(2/n) (<= 1.6 % here)
        tol = 6 * (2 / w.numel()) ** 0.5
        assert abs(w.var().item() / expected - 1) < tol
        assert abs(w.mean().item()) < 6 * (expected / w.numel()) ** 0.5
        assert torch.count_nonzero(layer.bias) == 0


def test_batchnorm_variant_normalises_hidden_layers():
    net = models.autoencoder(norm="batchnorm")
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 7
    assert all(l.bias is None for l in linears(net)[:-1]) and linears(net)[-1].bias is not None
    assert net(torch.rand(8, 784)).shape == (8, 784)


def test_mean_only_batchnorm_centres_without_scaling():
    torch.manual_seed(2)
    bn = models.MeanOnlyBatchNorm(4, momentum=0.5)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    a = torch.randn(64, 4) * 3 + 7
    y = bn(a)
    torch.testing.assert_close(y.mean(0), bn.bias.detach())
    torch.testing.assert_close(y.std(0), a.std(0))  # no variance scaling
    torch.testing.assert_close(bn.running_mean, 0.5 * a.mean(0))
    bn.eval()
    torch.testing.assert_close(bn(a), a - 0.5 * a.mean(0) + bn.bias.detach())
    # the gradient reaches the learnable bias
    bn.train()
    bn(a).sum().backward()
    torch.testing.assert_close(bn.bias.grad, torch.full((4,), 64.0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown norm"):
        models.autoencoder(norm="layernorm")
    with pytest.raises(ValueError, match="prescale must be positive"):
        models.autoencoder(prescale=0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        models.mlp([3, 4, 2], activation="swish")
    with pytest.raises(ValueError, match="activations for 1 hidden"):
        models.mlp([3, 4, 2], activation=["relu", "relu"])


def test_losses_match_their_definitions():
    torch.manual_seed(3)
    out, tgt = torch.rand(6, 5), torch.rand(6, 5)
    torch.testing.assert_close(losses.mse_sum(out, tgt), ((out - tgt) ** 2).sum() / 6)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    manual = -(logits.log_softmax(1)[torch.arange(6), labels]).mean()
    torch.testing.assert_close(losses.cross_entropy(logits, labels), manual)
    assert losses.get("mse") is losses.mse_sum and losses.target_kind("mse") == "input"
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="differs from target shape"):
        losses.mse_sum(out, tgt[:, :4])
