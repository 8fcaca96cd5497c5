"""``python -m app worker`` runs the Faust worker (same as ``faust -A app worker``)."""

from app.worker import get_app

if __name__ == "__main__":
    get_app().main()
