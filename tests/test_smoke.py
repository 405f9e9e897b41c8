"""A first end-to-end round trip on both backends."""


def test_round_trip(store, make_h5):
    a, b = make_h5(), make_h5()
    assert store.add_data("EOS", [a, b], metadata={"cycle": 3}) == 1
    assert store.get_data_versions("EOS") == [1]
    assert store.get_data_files("EOS", "latest") == sorted([a, b])
    entries = store.search("EOS", "data", metadata={"cycle": 3})
    assert sorted(e["filename"] for e in entries) == sorted([a, b])
