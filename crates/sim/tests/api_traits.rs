//! What a tower user expects of the simulator's public types, checked at
//! compile time: `Sim` is a `Clone + Debug + Send + Sync` service of any
//! `http::Request<B>` (a body neither `Sync` nor `Clone` included) with a
//! `Send` future, so it boxes into a `BoxCloneSyncService` under a stack.
#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::Cell;
use std::fmt::Debug;

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_fanout_sim::{Jitter, Model, Overflow, ServerHandle, Sim, Stats};

/// A body that is `Send` but neither `Sync` nor `Clone`.
struct UnsyncBody(#[allow(dead_code)] Cell<u8>);

fn service_of<Req, S>(_: &S)
where
    S: Service<Req> + Clone + Send + Sync + Debug + 'static,
    S::Future: Send + 'static,
{
}

#[tokio::test(start_paused = true)]
async fn sim_is_a_clone_send_sync_service_of_any_request() {
    fn value<T: Clone + Debug + Send + Sync + 'static>() {}
    value::<Model>();
    value::<Stats>();
    value::<Jitter>();
    value::<Overflow>();
    fn handle<T: Debug + Send + Sync>() {}
    handle::<ServerHandle>();

    let sim = Sim::new(Model::new(), 1);
    service_of::<http::Request<UnsyncBody>, _>(&sim);
    let boxed: BoxCloneSyncService<http::Request<UnsyncBody>, _, _> = BoxCloneSyncService::new(sim);
    let request = http::Request::new(UnsyncBody(Cell::new(0)));
    let response = tokio::spawn(boxed.oneshot(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
}
