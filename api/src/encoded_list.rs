//! A kind's list as it leaves the server. The list cache keeps each object's protobuf encoding
//! ([`crate::list_cache`]); a list response is those encodings framed as the `items` of the
//! kind's `…List` message. [`EncodedList`] is that message with its items as bytes: on the wire
//! it is the same as `PodList`, `NodeList`, … (a repeated message field and a repeated bytes
//! field are both length-delimited records under one tag), so clients decode the generated
//! types unchanged.
//!
//! The generated servers return owned `…List` values; [`ListRoute`] sits in front of one and
//! answers its `List` method with an `EncodedList` instead, so ten thousand cached pods go out
//! without being copied into messages and encoded again.

use crate::service::KindService;
use prost::bytes::Bytes;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use skiff_proto::api::{ListMeta, ListRequest};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};

/// Every kind's `…List` message (`api_version = 1, kind = 2, metadata = 3, items = 4`, as
/// `proto/build.rs` generates them), its items already encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedList {
    #[prost(string, tag = "1")]
    pub api_version: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<ListMeta>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub items: Vec<Bytes>,
}

/// A kind's generated server `S` with its `List` method answered from [`KindService::list`]'s
/// encoded list; every other method goes to `S`.
pub struct ListRoute<S, T> {
    server: S,
    service: Arc<KindService<T>>,
    path: Arc<str>,
}

impl<S: NamedService, T> ListRoute<S, T> {
    pub fn new(server: S, service: Arc<KindService<T>>) -> Self {
        ListRoute { server, service, path: format!("/{}/List", S::NAME).into() }
    }
}

impl<S: Clone, T> Clone for ListRoute<S, T> {
    fn clone(&self) -> Self {
        ListRoute { server: self.server.clone(), service: self.service.clone(), path: self.path.clone() }
    }
}

impl<S: NamedService, T> NamedService for ListRoute<S, T> {
    const NAME: &'static str = S::NAME;
}

impl<S, T> Service<http::Request<BoxBody>> for ListRoute<S, T>
where
    S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
    T: Serialize + DeserializeOwned + Message + Default + Clone + Send + Sync + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.server.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        if req.uri().path() != &*self.path {
            return Box::pin(self.server.call(req));
        }
        let method = ListMethod(self.service.clone());
        Box::pin(
            async move { Ok(Grpc::new(ProstCodec::<EncodedList, ListRequest>::default()).unary(method, req).await) },
        )
    }
}

struct ListMethod<T>(Arc<KindService<T>>);

impl<T> UnaryService<ListRequest> for ListMethod<T>
where
    T: Serialize + DeserializeOwned + Message + Default + Clone + Send + Sync + 'static,
{
    type Response = EncodedList;
    type Future = BoxFuture<tonic::Response<EncodedList>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<ListRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(tonic::Response::new(service.list(req).await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::FileDescriptorSet;
    use skiff_proto::api::{ObjectMeta, Pod, PodList, PodSpec};

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta { name: name.into(), namespace: "ns".into(), ..Default::default() }),
            spec: Some(PodSpec { node_name: "n1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn an_encoded_list_decodes_as_the_kinds_list() {
        let pods = vec![pod("a"), pod("b")];
        let metadata = Some(ListMeta { resource_version: "7".into(), ..Default::default() });
        let encoded = EncodedList {
            api_version: "v1".into(),
            kind: "PodList".into(),
            metadata: metadata.clone(),
            items: pods.iter().map(|p| p.encode_to_vec().into()).collect(),
        };
        let decoded = PodList::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, PodList { api_version: "v1".into(), kind: "PodList".into(), metadata, items: pods });
    }

    /// Every generated `…List` has the field numbers and types `EncodedList` assumes.
    #[test]
    fn every_kinds_list_has_the_encoded_lists_shape() {
        use prost_types::field_descriptor_proto::{Label, Type};
        let set = FileDescriptorSet::decode(skiff_proto::FILE_DESCRIPTOR_SET).unwrap();
        let messages: Vec<_> =
            set.file.iter().filter(|f| f.package() == "skiff.api").flat_map(|f| f.message_type.iter()).collect();
        let mut checked = 0;
        for info in skiff_proto::api::KINDS {
            let name = format!("{}List", info.kind);
            let list = messages.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("no message {name}"));
            let shape: Vec<_> = list.field.iter().map(|f| (f.number(), f.name(), f.r#type(), f.label())).collect();
            let item = format!(".skiff.api.{}", info.kind);
            assert_eq!(
                shape,
                [
                    (1, "api_version", Type::String, Label::Optional),
                    (2, "kind", Type::String, Label::Optional),
                    (3, "metadata", Type::Message, Label::Optional),
                    (4, "items", Type::Message, Label::Repeated),
                ],
                "{name}"
            );
            assert_eq!(list.field[3].type_name(), item, "{name}'s items");
            checked += 1;
        }
        assert_eq!(checked, skiff_proto::api::KINDS.len());
        assert!(checked >= 25, "checked {checked} kinds");
    }
}
