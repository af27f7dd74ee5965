//! AWS SQS adapter for qt (aws-sdk-sqs).
