pub async fn run(_a: DemoArgs) -> anyhow::Result<()> {
    Ok(())
}
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
