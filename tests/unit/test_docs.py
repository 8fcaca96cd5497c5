from tools import docs


def test_reference_tables_are_generated_and_current():
    text = docs.REFERENCE.read_text()
    assert docs.render(text) == text, "run `imgstream docs` to regenerate the reference tables"
    assert "IMGSTREAM_KAFKA_BOOTSTRAP" in text and "imgstream_end_to_end_seconds" in text
