//! LISTEN and UNLISTEN in transaction pooling: answered by the proxy,
//! which listens for the client on a connection of its own (see
//! [`crate::notify`]).

use bytes::BytesMut;
use shardgate_protocol::{backend, PgError};
use shardgate_router::lexer::split_statements;
use shardgate_router::ListenCommand;

use super::Session;

impl Session {
    /// Answers a simple query that is LISTEN or UNLISTEN; false if it is not.
    pub(super) async fn answer_listen_query(&mut self, sql: &str) -> bool {
        let stmts = split_statements(sql);
        let commands: Vec<Option<ListenCommand>> =
            stmts.iter().map(|s| ListenCommand::parse(s)).collect();
        let result = match commands.as_slice() {
            [Some(cmd)] => self.run_listen(cmd).await,
            many if many.iter().any(Option::is_some) => Err(PgError::error(
                "0A000",
                "in transaction pooling, LISTEN and UNLISTEN must be sent as a statement of their own",
            )
            .with_hint("Send LISTEN in a query of its own.")),
            _ => return false,
        };
        self.reply_simple(result);
        true
    }

    /// Runs LISTEN or UNLISTEN for the client: the hub of the default
    /// shard's primary listens (or stops, once no client listens).
    pub(super) async fn run_listen(&mut self, cmd: &ListenCommand) -> Result<BytesMut, PgError> {
        match cmd {
            ListenCommand::Listen(channel) => {
                let shard = self.default_shard();
                let writer = self.shards[shard].writer().index;
                let params = self.pool_of(shard, writer).connect_params().clone();
                let hubs = self.runtime.notifications.clone();
                let sub = self.notifications.get_or_subscribe(&hubs, &params);
                sub.listen(channel).await?;
            }
            ListenCommand::Unlisten(channel) => {
                if let Some(sub) = &self.notifications.subscription {
                    sub.unlisten(Some(channel));
                }
            }
            ListenCommand::UnlistenAll => {
                if let Some(sub) = &self.notifications.subscription {
                    sub.unlisten(None);
                }
            }
        }
        let mut out = BytesMut::new();
        backend::command_complete(cmd.tag(), &mut out);
        Ok(out)
    }
}
