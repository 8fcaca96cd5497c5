"""What every tool uses: the tooling's error (in imgstream's one hierarchy) and the processes it starts and stops."""
