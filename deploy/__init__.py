"""Running Flywheel: the embedded all-in-one launcher (`flywheel up`), the embedded Kafka-protocol
broker, the canary controller, and deployment manifests for scale-out."""
