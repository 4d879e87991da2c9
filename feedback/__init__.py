"""The listening half of the loop: event schemas, the Kafka producer with a durable local spool, the
consumer that materialises the store, and preference-pair export for the trainer."""
