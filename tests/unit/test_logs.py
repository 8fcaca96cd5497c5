import io
import json
import logging

from app.core.logs import JsonFormatter, TextFormatter


def _emit(formatter, **extra) -> str:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(formatter)
    log = logging.getLogger(f"imgstream.test.{id(formatter)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.warning("dead-lettered: %s", "bad jpeg", extra=extra)
    return buf.getvalue()


def test_json_lines_carry_image_id_and_fields():
    line = _emit(JsonFormatter(), image_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427", code="invalid_image")
    assert line.count("\n") == 1
    obj = json.loads(line)
    assert obj["message"] == "dead-lettered: bad jpeg" and obj["level"] == "warning"
    assert obj["image_id"] == "1b4e28ba-2fa1-11d2-883f-0016d3cca427" and obj["code"] == "invalid_image"


def test_text_lines_end_with_image_id():
    assert _emit(TextFormatter("%(message)s"), image_id="abc").strip() == "dead-lettered: bad jpeg image_id=abc"
