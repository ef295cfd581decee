//! `/function/NAME[.NAMESPACE][/PATH][?QUERY]` reaches the function with its method, path and
//! query; what names no function or route gets a 4xx saying so.

use reqwest::Method;
use serde_json::json;

use crate::{answer, printer, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_queries_and_the_namespace_reach_the_function() {
    let g = Gateway::start().await;
    let vars = ["Http_Method", "Http_Path", "Http_Query"];
    g.deploy("where", &printer(&vars), json!({})).await;
    for (path, want) in [
        (
            "/function/where",
            "Http_Method=GET\nHttp_Path=/\nHttp_Query=\n",
        ),
        (
            "/function/where/",
            "Http_Method=GET\nHttp_Path=/\nHttp_Query=\n",
        ),
        (
            "/function/where/a/b?x=1&y=two",
            "Http_Method=GET\nHttp_Path=/a/b\nHttp_Query=x=1&y=two\n",
        ),
        (
            "/function/where.openfaas-fn/c?z",
            "Http_Method=GET\nHttp_Path=/c\nHttp_Query=z\n",
        ),
    ] {
        assert_eq!(
            answer(g.get(path).await).await,
            (200, want.to_string()),
            "{path}"
        );
    }
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let r = g
            .anon(method.clone(), "/function/where/m")
            .send()
            .await
            .unwrap();
        let (status, text) = answer(r).await;
        assert_eq!(status, 200, "{method}: {text}");
        assert!(
            text.starts_with(&format!("Http_Method={method}\n")),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_functions_namespaces_and_routes_get_clear_4xx() {
    let g = Gateway::start().await;
    g.deploy("known", "cat", json!({})).await;
    let (status, text) = answer(g.get("/function/unknown").await).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("\"unknown\" not found"), "{text}");
    let (status, text) = answer(g.get("/function/known.other-ns/x").await).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("namespace \"other-ns\" not found"), "{text}");
    let (status, text) = answer(g.get("/function/Bad_Name").await).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("function name"), "{text}");
    let (status, text) = answer(g.get("/no/such/route").await).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("no such route"), "{text}");
    // The function itself is still there.
    let r = g
        .anon(Method::POST, "/function/known")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await, (200, "hi".to_string()));
}
