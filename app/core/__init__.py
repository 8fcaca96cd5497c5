"""What every stage shares: settings, the error hierarchy, metrics, logging, security, back-off and thread pools."""
