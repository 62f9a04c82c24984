//! The per-kind gRPC services (`skiff.api.Pods`, `skiff.api.Deployments`, …) and the
//! kind-agnostic `skiff.api.Objects`. Handlers are adapters: typed message → JSON → the
//! [`Registry`] → JSON → typed message; errors map through `ApiError`'s table.

use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, KindInfo};
use crate::registry::{DeleteOptions, ListOptions, Registry, UpdateScope, WatchOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use skiff_proto::api::*;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The API server's shared state.
pub struct Api {
    pub registry: Registry,
}

/// One kind's service over the shared [`Api`].
pub struct KindService<T> {
    api: Arc<Api>,
    info: &'static KindInfo,
    _t: PhantomData<fn() -> T>,
}

impl<T> KindService<T> {
    pub fn new(api: Arc<Api>, resource: &str) -> Self {
        let info = kinds::by_resource(resource).expect("generated services name registered kinds");
        KindService { api, info, _t: PhantomData }
    }
}

fn to_json<T: Serialize>(v: &T) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

fn from_json<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::Internal(format!("stored object does not fit its schema: {e}")))
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send>>;

impl<T: Serialize + DeserializeOwned + Send + 'static> KindService<T> {
    async fn create(&self, obj: T) -> ApiResult<T> {
        from_json(self.api.registry.create(self.info, to_json(&obj)?, "").await?)
    }

    async fn get(&self, req: GetRequest) -> ApiResult<T> {
        from_json(self.api.registry.get(self.info, &req.namespace, &req.name).await?)
    }

    async fn list<L: DeserializeOwned>(&self, req: ListRequest) -> ApiResult<L> {
        let opts = ListOptions {
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            limit: req.limit,
            continue_token: req.r#continue,
        };
        let page = self.api.registry.list(self.info, &req.namespace, &opts).await?;
        from_json(json!({
            "apiVersion": self.info.api_version,
            "kind": format!("{}List", self.info.kind),
            "metadata": {"resourceVersion": page.resource_version.to_string(), "continue": page.continue_token},
            "items": page.items,
        }))
    }

    async fn update(&self, obj: T, scope: UpdateScope) -> ApiResult<T> {
        from_json(self.api.registry.update(self.info, to_json(&obj)?, scope).await?)
    }

    async fn patch(&self, req: PatchRequest) -> ApiResult<T> {
        let patch: Value =
            serde_json::from_str(&req.patch).map_err(|e| ApiError::BadRequest(format!("patch is not JSON: {e}")))?;
        from_json(self.api.registry.patch(self.info, &req.namespace, &req.name, &patch, UpdateScope::Main).await?)
    }

    async fn delete(&self, req: DeleteRequest) -> ApiResult<T> {
        let opts = DeleteOptions {
            grace_period_seconds: req.grace_period_seconds,
            propagation_policy: req.propagation_policy,
            resource_version: req.resource_version,
        };
        from_json(self.api.registry.delete(self.info, &req.namespace, &req.name, &opts).await?)
    }

    async fn watch<E: DeserializeOwned + Send + 'static>(&self, req: WatchRequest) -> ApiResult<EventStream<E>> {
        let opts = WatchOptions {
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            resource_version: req.resource_version,
            allow_bookmarks: req.allow_watch_bookmarks,
        };
        let rx = self.api.registry.watch(self.info, &req.namespace, opts).await?;
        Ok(Box::pin(ReceiverStream::new(rx).map(|item| {
            let ev = item.map_err(Status::from)?;
            from_json::<E>(json!({"type": ev.kind, "object": ev.object})).map_err(Status::from)
        })))
    }

    async fn get_scale(&self, req: GetRequest) -> ApiResult<Scale> {
        let obj = self.api.registry.get(self.info, &req.namespace, &req.name).await?;
        Ok(scale_of(&obj))
    }

    async fn update_scale(&self, scale: Scale) -> ApiResult<Scale> {
        let meta = scale.metadata.unwrap_or_default();
        let replicas = scale.spec.map_or(0, |s| s.replicas);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                name: meta.name,
                causes: vec![crate::error::FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            });
        }
        let mut patch = json!({"spec": {"replicas": replicas}});
        if !meta.resource_version.is_empty() {
            patch["metadata"] = json!({"resourceVersion": meta.resource_version});
        }
        let obj = self.api.registry.patch(self.info, &meta.namespace, &meta.name, &patch, UpdateScope::Main).await?;
        Ok(scale_of(&obj))
    }
}

fn scale_of(obj: &Value) -> Scale {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    Scale {
        api_version: "autoscaling/v1".into(),
        kind: "Scale".into(),
        metadata: Some(ObjectMetaRef {
            name: crate::object::name(obj).into(),
            namespace: crate::object::namespace(obj).into(),
            resource_version: crate::object::resource_version(obj).into(),
        }),
        spec: Some(ScaleSpec { replicas: obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) as i32 }),
        status: Some(ScaleStatus {
            replicas: obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0) as i32,
            selector,
        }),
    }
}

// Methods that a nested macro adds are invisible to `#[tonic::async_trait]` (it sees the macro
// call, not the method), so these are written in the form async_trait expands to.
type BoxFut<'a, T> = Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

macro_rules! subresource_status {
    (yes, $kind:ident) => {
        fn update_status<'life0, 'async_trait>(&'life0 self, req: Request<$kind>) -> BoxFut<'async_trait, $kind>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(self.update(req.into_inner(), UpdateScope::Status).await?)) })
        }
    };
    (no, $kind:ident) => {};
}

macro_rules! subresource_scale {
    (yes) => {
        fn get_scale<'life0, 'async_trait>(&'life0 self, req: Request<GetRequest>) -> BoxFut<'async_trait, Scale>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::get_scale(self, req.into_inner()).await?)) })
        }
        fn update_scale<'life0, 'async_trait>(&'life0 self, req: Request<Scale>) -> BoxFut<'async_trait, Scale>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::update_scale(self, req.into_inner()).await?)) })
        }
    };
    (no) => {};
}

macro_rules! kind_service {
    ($kind:ident, $list:ident, $event:ident, $module:ident, $svc:ident, $server:ident, $resource:literal, status: $status:ident, scale: $scale:ident) => {
        #[tonic::async_trait]
        impl $module::$svc for KindService<$kind> {
            async fn create(&self, req: Request<$kind>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::create(self, req.into_inner()).await?))
            }
            async fn get(&self, req: Request<GetRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::get(self, req.into_inner()).await?))
            }
            async fn list(&self, req: Request<ListRequest>) -> Result<Response<$list>, Status> {
                Ok(Response::new(KindService::list(self, req.into_inner()).await?))
            }
            async fn update(&self, req: Request<$kind>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::update(self, req.into_inner(), UpdateScope::Main).await?))
            }
            async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::patch(self, req.into_inner()).await?))
            }
            async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::delete(self, req.into_inner()).await?))
            }
            type WatchStream = EventStream<$event>;
            async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
                Ok(Response::new(KindService::watch::<$event>(self, req.into_inner()).await?))
            }
            subresource_status!($status, $kind);
            subresource_scale!($scale);
        }
    };
}

skiff_proto::for_each_kind!(kind_service);

/// The kind-agnostic service: JSON bodies, any kind by resource name.
pub struct ObjectsService {
    api: Arc<Api>,
}

fn parse_body(json: &str) -> ApiResult<Value> {
    serde_json::from_str(json).map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

fn raw(v: &Value) -> RawObject {
    RawObject { json: v.to_string() }
}

#[tonic::async_trait]
impl objects_server::Objects for ObjectsService {
    async fn create(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let req = req.into_inner();
        let info = kinds::by_resource(&req.resource)?;
        let obj = self.api.registry.create(info, parse_body(&req.json)?, &req.namespace).await?;
        Ok(Response::new(raw(&obj)))
    }
    async fn get(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let req = req.into_inner();
        let info = kinds::by_resource(&req.resource)?;
        Ok(Response::new(raw(&self.api.registry.get(info, &req.namespace, &req.name).await?)))
    }
    async fn update(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let req = req.into_inner();
        let info = kinds::by_resource(&req.resource)?;
        let obj = self.api.registry.update(info, parse_body(&req.json)?, UpdateScope::Main).await?;
        Ok(Response::new(raw(&obj)))
    }
    async fn delete(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let req = req.into_inner();
        let info = kinds::by_resource(&req.resource)?;
        let obj = self.api.registry.delete(info, &req.namespace, &req.name, &DeleteOptions::default()).await?;
        Ok(Response::new(raw(&obj)))
    }
}

/// Every API service, ready to mount on the master's client listener.
pub fn routes(api: Arc<Api>) -> tonic::service::Routes {
    let mut routes = tonic::service::RoutesBuilder::default();
    macro_rules! add {
        ($kind:ident, $list:ident, $event:ident, $module:ident, $svc:ident, $server:ident, $resource:literal, status: $status:ident, scale: $scale:ident) => {
            routes.add_service(
                $module::$server::new(KindService::<$kind>::new(api.clone(), $resource))
                    .max_decoding_message_size(crate::registry::MAX_OBJECT_BYTES * 2),
            );
        };
    }
    skiff_proto::for_each_kind!(add);
    routes.add_service(objects_server::ObjectsServer::new(ObjectsService { api }));
    routes.routes()
}
