//! gitdispatch on AWS, against moto in server mode (SQS, Step Functions, DynamoDB,
//! CloudFormation) and stand-ins for what moto lacks (CodePipeline's job calls): the
//! deployment templates deployed, the binary in the middle, faults injected between
//! it and AWS.

#[path = "../common/mod.rs"]
mod common;

mod aws_faults;
mod codepipeline;
mod deploy_artefacts;
mod on_aws;
