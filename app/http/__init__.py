"""Stage 1, HTTP in: the views, the typed contracts that generate the OpenAPI document, and the DataPlane every view calls."""
