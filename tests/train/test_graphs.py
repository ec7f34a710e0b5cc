"""--cuda_graph: which calls are captured and replayed, what stays eager, that capture leaves the BatchNorm
statistics as eager training would, and (on a GPU) that replayed steps train the weights eager steps do.

On CPU, torch.cuda.make_graphed_callables is replaced by a stand-in that does what it does to the model
(warm-up forward/backward passes, then a callable running the captured module), so everything of ours
around it runs for real."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from video3d_fast import ops
from video3d_fast.models import generate_model, set_backend
from video3d_fast.train import Runner
from video3d_fast.train import engine
from video3d_fast.train.graphs import GraphedTraining, cuda_graph_unsupported_reason

from ..models.helpers import narrow_options
from .helpers import state_equal, tiny_config, tiny_dataset


class StandIn:
    """make_graphed_callables' effects on the model without CUDA: ``num_warmup_iters`` forward and
    backward passes (gradients through autograd.grad, as it does: nothing accumulates), then the captured
    module itself as the 'replay'."""

    def __init__(self, fail: bool = False):
        self.fail, self.captures, self.error_modes = fail, [], []

    def __call__(self, module, sample_args, num_warmup_iters, allow_unused_input, capture_error_mode="global"):
        self.error_modes.append(capture_error_mode)
        assert not torch.is_autocast_enabled("cpu") or not torch.is_autocast_cache_enabled()
        params = [p for p in module.parameters() if p.requires_grad]
        for _ in range(num_warmup_iters):
            out = module(*sample_args)
            torch.autograd.grad(out.float().sum(), params, allow_unused=allow_unused_input)
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures.append(tuple(a.shape for a in sample_args))
        return module


def _net():
    torch.manual_seed(0)
    return generate_model("resnet", 10, n_classes=3, **narrow_options("resnet")).train()


def test_unsupported_options_are_named():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert cuda_graph_unsupported_reason(cuda, False, 1, False) is None
    assert "CUDA device" in cuda_graph_unsupported_reason(cpu, False, 1, False)
    assert "--batchnorm_sync" in cuda_graph_unsupported_reason(cuda, True, 1, False)
    assert "--accumulation_steps 1" in cuda_graph_unsupported_reason(cuda, False, 2, False)
    assert "--compile" in cuda_graph_unsupported_reason(cuda, False, 1, True)


def test_runner_refuses_cuda_graph_on_cpu(tmp_path):
    files = tiny_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="--cuda_graph needs a CUDA device"):
        Runner(tiny_config(files, tmp_path / "r", cuda_graph=True, n_epochs=1, no_val=True)).run()


def test_loader_bench_step_refuses_cuda_graph_on_cpu():
    from video3d_fast.train.throughput import measure_train_step

    clips = torch.zeros(2, 3, 4, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="--cuda_graph needs a CUDA device"):
        measure_train_step(_net(), lambda x: x.float(), clips, 3, 1, torch.device("cpu"), cuda_graph=True)


def test_capture_once_replay_same_signature_and_eager_otherwise():
    net, stand_in = _net(), StandIn()
    graphed = GraphedTraining(net, make_graphed=stand_in, echo=lambda line: None)
    x = torch.randn(2, 3, 4, 16, 16)
    eager_net = copy.deepcopy(net)
    out = graphed(x)
    assert stand_in.captures == [(x.shape,)] and graphed.replays == 1 and graphed.eager_calls == 0
    assert stand_in.error_modes == ["thread_local"]  # the loader's pin-memory thread may not break capture
    # the warm-up passes updated the BatchNorm statistics three times; they were restored, so after one
    # step they are those of one eager step
    ref = eager_net(x)
    assert torch.equal(out, ref)
    assert state_equal(net.state_dict(), eager_net.state_dict())
    graphed(torch.randn(2, 3, 4, 16, 16))
    assert graphed.replays == 2
    graphed(torch.randn(3, 3, 4, 16, 16))  # another batch size (e.g. the last, partial batch of an epoch)
    graphed(torch.randn(2, 3, 4, 16, 16).contiguous(memory_format=torch.channels_last_3d))
    with ops.recompute_conv_outputs():
        graphed(torch.randn(2, 3, 4, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        graphed(torch.randn(2, 3, 4, 16, 16))
    with torch.no_grad():
        graphed(x)
    net.eval()
    graphed(x)
    assert graphed.replays == 2 and graphed.eager_calls == 6 and len(stand_in.captures) == 1


def test_capture_failure_warns_restores_statistics_and_trains_eagerly():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    graphed = GraphedTraining(net, make_graphed=StandIn(fail=True), echo=lambda line: None)
    x = torch.randn(2, 3, 4, 16, 16)
    with pytest.warns(RuntimeWarning, match="capture failed .*training continues without CUDA graphs"):
        graphed(x)
    assert graphed.failed and graphed.eager_calls == 1
    eager_net = _net()
    eager_net(x)
    assert state_equal(net.state_dict(), eager_net.state_dict()) and not state_equal(net.state_dict(), before)
    graphed(x)
    assert graphed.eager_calls == 2


def test_runner_with_cuda_graph_trains_the_same_weights(tmp_path, monkeypatch):
    """Through the whole loop (optimizer, schedule, the partial last batch): the same weights and running
    statistics as a plain run, bit for bit, with the capture stand-in."""
    files = tiny_dataset(tmp_path / "data")
    plain = Runner(tiny_config(files, tmp_path / "plain", n_epochs=2, no_val=True))
    plain.run()
    stand_in = StandIn()
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    monkeypatch.setattr(engine, "cuda_graph_unsupported_reason", lambda *a, **k: None)
    graphed = Runner(tiny_config(files, tmp_path / "graphed", n_epochs=2, no_val=True, cuda_graph=True))
    graphed.run()
    assert len(stand_in.captures) == 1 and graphed.graphed.replays > 0
    assert state_equal(plain.model.state_dict(), graphed.model.state_dict())


def _ddp_worker(rank, world, init_file, files, out_dir, graphed):
    """One of two gloo processes training the tiny run for 2 epochs; each saves its final state."""
    import torch.distributed as dist

    from video3d_fast.train.distributed import DistContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if graphed:  # this process's own stand-ins (the parent's monkeypatches do not reach it)
        torch.cuda.make_graphed_callables = StandIn()
        engine.cuda_graph_unsupported_reason = lambda *a, **k: None
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    runner = Runner(tiny_config(files, out_dir, n_epochs=2, no_val=True, cuda_graph=graphed), ctx=ctx)
    runner.run()
    torch.save(runner.model.state_dict(), out_dir / f"final_{rank}.pt")
    assert not graphed or (runner.graphed.replays > 0 and runner.graphed.failed is None)
    dist.destroy_process_group()


def test_ddp_with_cuda_graph_trains_what_ddp_trains(tmp_path):
    """Two processes: the graphed run (no DDP wrapper; parameters broadcast once, BatchNorm buffers
    before each step, gradients averaged in flattened all-reduces) against plain DDP. Each rank's
    weights and running statistics agree to rounding (DDP divides before it sums, we after); rank 1's
    statistics are rank 0's of the step before, updated by its own last batch, in both."""
    import torch.multiprocessing as mp

    files = tiny_dataset(tmp_path / "data")
    states = {}
    for graphed in (False, True):
        out = tmp_path / ("graphed" if graphed else "ddp")
        out.mkdir()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / f"init_{graphed}"), files, out, graphed), nprocs=2)
        states[graphed] = [torch.load(out / f"final_{rank}.pt") for rank in (0, 1)]
    for rank in (0, 1):
        for key, a in states[False][rank].items():
            b = states[True][rank][key]
            if a.is_floating_point():
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {key}")
            else:
                assert torch.equal(a, b), (rank, key)


def test_gradient_average_and_broadcast_without_ddp_are_identity():
    from video3d_fast.train.distributed import DistContext, average_gradients, broadcast_from_main

    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    before = p.grad.clone()
    average_gradients([p], DistContext())
    broadcast_from_main([p], DistContext())
    assert torch.equal(p.grad, before)


# ------------------------------------------------------------------------------------------------
# on a GPU: real capture and replay
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_replayed_steps_train_like_eager_steps_on_cuda(backend):
    """The fused backends' ops captured and replayed: four SGD steps train what four eager steps train.
    fp32 ResNet-10 at a few channels (few kernels to compile inside the suite's time budget)."""
    status = ops.available_backends()[backend]
    if not status.available:
        pytest.skip(f"{backend} backend unavailable: {status.reason}")
    torch.manual_seed(0)
    base = generate_model("resnet", 10, n_classes=4, **narrow_options("resnet")).cuda()
    base = set_backend(base.to(memory_format=torch.channels_last_3d), backend)
    nets = {"eager": base, "graphed": copy.deepcopy(base)}
    clips = [torch.randn(4, 3, 8, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last_3d)
             for _ in range(4)]
    labels = [torch.randint(0, 4, (4,), device="cuda") for _ in clips]
    losses = {}
    for name, net in nets.items():
        net.train()
        call = GraphedTraining(net, echo=lambda line: None) if name == "graphed" else net
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        losses[name] = []
        for x, y in zip(clips, labels):
            loss = F.cross_entropy(call(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
        if name == "graphed":
            assert call.failed is None, call.failed
            assert call.replays == len(clips)
    assert losses["graphed"] == pytest.approx(losses["eager"], rel=1e-3)
    for (key, a), b in zip(nets["eager"].state_dict().items(), nets["graphed"].state_dict().values()):
        if a.is_floating_point():
            err = ((a - b).norm() / a.norm().clamp_min(1e-6)).item()
            assert err < 1e-3, (key, err)
        else:
            assert torch.equal(a, b), key
