"""HTTP adapters over ``app.dataplane.DataPlane``, mounted on the Faust worker's aiohttp server."""
