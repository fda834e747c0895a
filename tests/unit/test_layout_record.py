"""The checkpoint's layout record and when random streams may be restored: same TP, PP, DP and the
same layers on each stage; a record without the split (written before uneven splits) was even."""

from types import SimpleNamespace

from goldtron.checkpoint.common_state import describe_layout_record, same_layout

PS = SimpleNamespace(tp_size=1, pp_size=4, dp_size=1, cp_size=1)
LAYOUT = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 4, "data_parallel_size": 1}


def _args(first=None, last=None):
    return SimpleNamespace(num_layers=8, pipeline_model_parallel_size=4, decoder_first_pipeline_num_layers=first,
                           decoder_last_pipeline_num_layers=last, account_for_embedding_in_pipeline_split=False,
                           account_for_loss_in_pipeline_split=False)


def test_same_split_is_the_same_layout():
    assert same_layout({"layout": dict(LAYOUT, pipeline_stage_layers=[1, 3, 3, 1])}, PS, _args(1, 1))


def test_other_split_is_another_layout():
    assert not same_layout({"layout": dict(LAYOUT, pipeline_stage_layers=[2, 2, 2, 2])}, PS, _args(1, 1))
    assert not same_layout({"layout": dict(LAYOUT, pipeline_stage_layers=[1, 3, 3, 1])}, PS, _args())


def test_a_record_without_the_split_was_even():
    old = {"layout": LAYOUT, "args": {"num_layers": 8}}
    assert same_layout(old, PS, _args())
    assert not same_layout(old, PS, _args(1, 1))
    assert same_layout({"layout": LAYOUT}, PS, _args())  # no args either: TP/PP/DP is all there is


def test_description_names_an_uneven_split_only():
    assert describe_layout_record(dict(LAYOUT, pipeline_stage_layers=[2, 2, 2, 2])) == "TP1 x PP4 x DP1"
    assert describe_layout_record(dict(LAYOUT, pipeline_stage_layers=[1, 3, 3, 1])) == \
        "TP1 x PP4 x DP1 (layers per stage 1,3,3,1)"


def test_another_context_parallel_size_is_another_layout():
    """CP ranks draw for other positions: their random streams are not restored at another CP size.
    A record without the field (written before context parallelism) means CP 1."""
    cp2 = SimpleNamespace(tp_size=1, pp_size=4, dp_size=1, cp_size=2)
    assert same_layout({"layout": LAYOUT}, PS, _args())
    assert not same_layout({"layout": LAYOUT}, cp2, _args())
    assert same_layout({"layout": dict(LAYOUT, context_parallel_size=2)}, cp2, _args())
    assert describe_layout_record(dict(LAYOUT, context_parallel_size=2)) == "TP1 x PP4 x DP1 x CP2"
