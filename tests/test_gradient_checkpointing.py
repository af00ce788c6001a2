"""--gradient-checkpointing: each encoder layer runs again in backward (its activations not kept), and the loss and
gradients are those of the plain pass, dropout included; a training run gives the same weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertkit import BertConfig, BertForPreTraining, BertModel, Tokenizer
from bertkit.model import set_gradient_checkpointing
from tests.conftest import batch_with_padding_and_pairs


def _pretraining_loss(model: BertForPreTraining, seed: int, dense: bool) -> torch.Tensor:
    input_ids, attention_mask, token_type_ids = batch_with_padding_and_pairs(model.config.vocab_size)
    if dense:  # no padding: the dense (B * T) layout instead of the packed one
        attention_mask = torch.ones_like(attention_mask)
    masked = attention_mask.bool() & (torch.arange(input_ids.shape[1]) % 3 == 1)
    torch.manual_seed(seed)  # dropout's masks
    out = model(input_ids, attention_mask, token_type_ids, mlm_positions=masked)
    return (F.cross_entropy(out.mlm_logits, input_ids[masked], reduction="sum")
            + F.cross_entropy(out.nsp_logits, torch.tensor([0, 1, 0, 1]), reduction="sum"))


def _loss_and_grads(model: BertForPreTraining, checkpointing: bool, dense: bool
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    set_gradient_checkpointing(model, checkpointing)
    calls = []
    hook = model.bert.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    model.zero_grad(set_to_none=True)
    loss = _pretraining_loss(model, seed=7, dense=dense)
    loss.backward()
    hook.remove()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


def test_checkpointed_layers_give_the_same_loss_and_gradients_dropout_included():
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=99)
    assert config.hidden_dropout_prob > 0 and config.attention_probs_dropout_prob > 0
    model = BertForPreTraining(config).train()
    for dense in (False, True):
        loss, grads, calls = _loss_and_grads(model, checkpointing=False, dense=dense)
        loss_c, grads_c, calls_c = _loss_and_grads(model, checkpointing=True, dense=dense)
        assert (calls, calls_c) == (1, 2)  # the first layer ran again in backward
        assert torch.equal(loss, loss_c)
        assert grads.keys() == grads_c.keys() and len(grads) == len(list(model.parameters()))
        worst = max((grads[n] - grads_c[n]).abs().max().item() for n in grads)
        assert worst <= 1e-6, f"gradients differ by {worst}"
        # a different dropout draw changes the gradients: the comparison above can see dropout
        model.zero_grad(set_to_none=True)
        _pretraining_loss(model, seed=8, dense=dense).backward()
        assert max((grads[n] - p.grad).abs().max().item() for n, p in model.named_parameters()) > 1e-4


def test_checkpointing_keeps_only_the_layer_inputs_for_backward():
    """The bytes autograd keeps for backward during the forward pass of a 6-layer encoder: with checkpointing,
    each layer's input; without, every layer's activations."""
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=99, num_hidden_layers=6)).train()
    input_ids, attention_mask, token_type_ids = batch_with_padding_and_pairs(99)

    def kept_bytes(checkpointing: bool) -> int:
        set_gradient_checkpointing(model, checkpointing)
        kept = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            kept.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids, attention_mask, token_type_ids).last_hidden_state
        out.square().sum().backward()
        return sum(kept)

    plain, checkpointed = kept_bytes(False), kept_bytes(True)
    assert checkpointed < plain / 3, (plain, checkpointed)


def test_checkpointing_is_off_outside_training_with_gradients():
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=99))
    set_gradient_checkpointing(model)
    calls = []
    model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    ids, mask, types = batch_with_padding_and_pairs(99)
    with torch.no_grad():
        model.train()(ids, mask, types)
    model.eval()(ids, mask, types).last_hidden_state.sum().backward()
    assert len(calls) == 2  # one call each: nothing to recompute without gradients or in eval mode


def test_a_training_run_with_gradient_checkpointing_gives_the_same_weights(tmp_path):
    from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
    from bertkit.train import TrainConfig, fit

    docs = [["北京欢迎你。", "今天天气很好。"], ["人民日报发表社论。", "新年快乐！"], ["我们去上海。", "上海很大。"]]
    tok = Tokenizer.train([s for d in docs for s in d], vocab_size=80, min_frequency=1)
    encoded = tokenize_documents(docs * 10, tok)
    weights = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tok)))  # dropout on
        task = PretrainingTask.from_documents(tok, encoded, [], PretrainingOptions(max_seq_len=32))
        fit(model, task, TrainConfig(output_dir=str(tmp_path / str(checkpointing)), batch_size=4, max_steps=3,
                                     lr=1e-3, warmup=1, progress=False, bf16=False,
                                     gradient_checkpointing=checkpointing))
        weights[checkpointing] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    start = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tok))).state_dict()
    assert max((weights[False][k] - start[k]).abs().max().item() for k in start) > 1e-4  # the steps moved it
    worst = max((weights[False][k] - weights[True][k]).abs().max().item() for k in start)
    assert worst <= 1e-6, f"weights differ by {worst}"
