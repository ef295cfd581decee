//! The `virga` binary: `virga up` runs the platform; every other command talks to a
//! gateway over its public HTTP API (the OpenFaaS one plus Virga's bundle upload), or
//! works on local files (`new`, `build`).

use clap::{Parser, Subcommand};

mod at_rest;
mod builder;
mod calls;
mod client;
mod config;
mod deploy;
mod dockerfile;
mod examples;
mod functions;
mod image_list;
mod login;
mod logs;
mod namespaces;
mod new;
mod oci_build;
mod pack;
mod queue;
mod registry;
mod secrets;
mod stack;
mod templates;
mod tokens;
mod triggers;
mod up;
mod up_images;
mod up_triggers;

/// Virga: a self-hosted serverless platform that speaks the OpenFaaS API.
#[derive(Debug, Parser)]
#[command(name = "virga", version, about)]
struct Cli {
    /// Gateway URL [default: $VIRGA_URL, $OPENFAAS_URL, the stack file's provider.gateway,
    /// then http://127.0.0.1:8080].
    #[arg(short = 'g', long, global = true, value_name = "URL")]
    gateway: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: gateway, store and local provider.
    Up(Box<up::UpArgs>),
    /// Store credentials for a gateway (checked against it first).
    Login(login::LoginArgs),
    /// Forget the stored credentials of a gateway.
    Logout,
    /// Create a function from a template and add it to a stack file.
    New(new::NewArgs),
    /// Build the stack file's functions into bundles under ./build/ (or OCI images, --oci).
    Build(builder::BuildArgs),
    /// Build, upload (bundles) or push (OCI images), and deploy the stack file's functions.
    Deploy(deploy::DeployArgs),
    /// Build the stack file's functions as OCI images and push them to their `image:`.
    Push(deploy::PushArgs),
    /// Push a root filesystem tarball as a one-layer base image for OCI builds.
    Import(oci_build::ImportArgs),
    /// Registry credentials for pulls and pushes.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// List deployed functions.
    #[command(alias = "ls")]
    List(functions::ListArgs),
    /// Show one function.
    Describe(functions::DescribeArgs),
    /// Call a function: stdin is the request body, the answer goes to stdout.
    Invoke(functions::InvokeArgs),
    /// Remove a function, or every function of a stack file with -f.
    #[command(alias = "rm")]
    Remove(functions::RemoveArgs),
    /// Set the number of instances of a function.
    Scale(functions::ScaleArgs),
    /// Print a function's logs; -f follows new lines until Ctrl-C.
    Logs(logs::LogsArgs),
    /// List the calls in progress (sync calls and async deliveries), the longest-running first.
    Calls(calls::CallsArgs),
    /// Show the async-call queues: depth, in flight, dead letters.
    Queue(queue::QueueArgs),
    /// List, retry or purge async calls whose attempts are exhausted.
    DeadLetters {
        #[command(subcommand)]
        command: queue::DeadLetterCommand,
    },
    /// List every function's event triggers (cron schedules, NATS and MQTT topics) with
    /// their last and next run.
    Triggers {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the platform's cached registry images (sizes, functions); `prune` the unused.
    Images(image_list::ImagesArgs),
    /// Manage secrets.
    Secret {
        #[command(subcommand)]
        command: secrets::SecretCommand,
    },
    /// Manage namespaces: create, get, update, remove, list.
    #[command(alias = "ns")]
    Namespace {
        #[command(subcommand)]
        command: namespaces::NamespaceCommand,
    },
    /// Create, list and revoke API tokens (roles and namespaces).
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// Show the newest changes made through the API: when, who, what, and the answer.
    Audit(tokens::AuditArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let flag = cli.gateway.as_deref();
    let connect = || client::Client::connect(&config::resolve_gateway(flag, None));
    match cli.command {
        Command::Up(args) => up::run(*args),
        Command::Login(args) => login::login(&config::resolve_gateway(flag, None), args),
        Command::Logout => login::logout(&config::resolve_gateway(flag, None)),
        Command::New(args) => new::run(args),
        Command::Build(args) => builder::run(args),
        Command::Deploy(args) => deploy::run(args, flag),
        Command::Push(args) => deploy::push(args),
        Command::Registry { command } => registry::run(command),
        Command::Import(args) => oci_build::import(args),
        Command::List(args) => functions::list(&connect()?, args),
        Command::Describe(args) => functions::describe(&connect()?, args),
        Command::Invoke(args) => functions::invoke(&connect()?, args),
        Command::Remove(args) => functions::remove(
            |stack_gw| client::Client::connect(&config::resolve_gateway(flag, stack_gw)),
            args,
        ),
        Command::Scale(args) => functions::scale(&connect()?, args),
        Command::Logs(args) => logs::run(&connect()?, args),
        Command::Secret { command } => secrets::run(&connect()?, command),
        Command::Namespace { command } => namespaces::run(&connect()?, command),
        Command::Images(args) => image_list::run(&connect()?, args),
        Command::Calls(args) => calls::show(&connect()?, args),
        Command::Queue(args) => queue::show(&connect()?, args),
        Command::DeadLetters { command } => queue::dead_letters(&connect()?, command),
        Command::Triggers { json } => triggers::show(&connect()?, json),
        Command::Token { command } => tokens::run(&connect()?, command),
        Command::Audit(args) => tokens::audit(&connect()?, args),
    }
}
