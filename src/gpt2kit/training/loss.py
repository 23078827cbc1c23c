"""The training loss: GPT-2's output head and the cross-entropy as one autograd step.

`F.cross_entropy(model(x))` makes autograd keep, for 124M at batch 4 x 256, four (1024, 50257) fp32
tensors of 200 MB each: the logits, their log-softmax, the zeroed tensor that nll_loss's backward
scatters into, and log-softmax's gradient. Each is fresh memory (page faults) swept end to end every
step; together they took about 6% of a CPU training step (torch.profiler, 124M, fp32).

The gradient of the mean cross-entropy with respect to the logits is known as soon as the loss is:
(softmax(logits) - onehot(target)) / N. So the forward turns the logits into exactly that, in place,
a few rows at a time while they are in cache, and the backward multiplies it into the gradients of
the hidden states and of the head. One (N, n_vocab) tensor instead of four, and two passes over it
instead of about eight. The numbers are F.cross_entropy's up to fp32 rounding (tests/test_training.py).
"""

from __future__ import annotations

import torch

# Rows of logits turned into gradients at a time: about 4 MB of fp32, so a block stays in cache between
# its logsumexp, exp and subtraction.
BLOCK_BYTES = 1 << 22


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # hidden (N, C), weight (n_vocab, C) tied to wte, targets (N,)
        logits = hidden @ weight.t()  # (N, n_vocab): the same product as the model's F.linear head
        N, V = logits.shape
        rows = max(1, BLOCK_BYTES // (4 * V))
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, N, rows):
            block, t = logits[start : start + rows], targets[start : start + rows]
            f = block.float()  # (rows, V); the block itself when the model is fp32
            lse = torch.logsumexp(f, dim=1, keepdim=True)  # (rows, 1)
            total += (lse.squeeze(1) - f.gather(1, t[:, None]).squeeze(1)).sum()
            f.sub_(lse).exp_()  # softmax
            f.scatter_add_(1, t[:, None], f.new_full((len(t), 1), -1.0))  # - onehot(target)
            if f.data_ptr() != block.data_ptr():
                block.copy_(f)  # back into the model's dtype (bf16), as autograd's cast would round it
        ctx.save_for_backward(hidden, weight)
        ctx.dlogits = logits  # (N, V): N x d loss / d logits, not yet scaled
        return total / N

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        dlogits = ctx.dlogits
        del ctx.dlogits
        scale = grad_loss.item() / dlogits.shape[0]  # the 1/N of the mean, and the caller's factor
        # beta=0 ignores the (broadcast) input; alpha scales inside the GEMM instead of a pass over the result.
        zero = dlogits.new_zeros(())
        d_hidden = torch.addmm(zero, dlogits, weight, beta=0, alpha=scale) if ctx.needs_input_grad[0] else None
        d_weight = torch.addmm(zero, dlogits.t(), hidden, beta=0, alpha=scale) if ctx.needs_input_grad[1] else None
        return d_hidden, d_weight, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `targets` under logits `hidden @ weight.T`; = F.cross_entropy(F.linear(hidden, weight), targets).

    hidden (..., C) final hidden states (after ln_f), weight (n_vocab, C), targets (...) token ids.
    """
    C = hidden.shape[-1]
    return _HeadCrossEntropy.apply(hidden.reshape(-1, C), weight, targets.reshape(-1))
