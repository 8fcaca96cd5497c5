"""``python -m app worker`` runs the Faust worker (same as ``faust -A app worker``)."""

from app.faust_app import get_app

if __name__ == "__main__":
    get_app().main()
