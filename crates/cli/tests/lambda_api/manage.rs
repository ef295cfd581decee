//! `ListFunctions` (paging with `MaxItems` and `Marker`) and `GetFunction` through boto3,
//! whose parsers must accept Virga's answers.

use reqwest::Method;
use serde_json::json;
use virga_testkit::Platform;

use crate::sdk;

#[test]
fn list_functions_pages_and_get_function_describes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_script(
        "alpha",
        "cat",
        json!({
            "envVars": {"GREETING": "hi", "exec_timeout": "2500ms"},
            "limits": {"memory": "512Mi"},
            "labels": {"team": "blue"},
            "secrets": [],
        }),
    );
    p.deploy_process("beta", "cat", json!({}));
    p.deploy_process("gamma", "cat", json!({}));
    let out = sdk(
        &p,
        dir.path(),
        r#"
pages, marker = [], None
while True:
    kw = {"MaxItems": 2}
    if marker:
        kw["Marker"] = marker
    r = c.list_functions(**kw)
    pages.append([f["FunctionName"] for f in r["Functions"]])
    marker = r.get("NextMarker")
    if not marker:
        break
out["pages"] = pages
out["all"] = [f["FunctionName"] for f in c.get_paginator("list_functions").paginate().build_full_result()["Functions"]]
g = c.get_function(FunctionName="alpha")
conf = g["Configuration"]
conf["LastModified"] = str(conf["LastModified"])
out["get"] = {"Configuration": conf, "Code": g["Code"], "Tags": g["Tags"]}
out["arn"] = c.get_function(FunctionName=conf["FunctionArn"])["Configuration"]["FunctionName"]
out["missing"] = err(lambda: c.get_function(FunctionName="nope"))
conf2 = c.get_function_configuration(FunctionName="alpha", Qualifier="$LATEST")
conf2.pop("ResponseMetadata")
conf2["LastModified"] = str(conf2["LastModified"])
out["same"] = conf2 == conf
"#,
    );
    assert_eq!(out["pages"], json!([["alpha", "beta"], ["gamma"]]), "{out}");
    assert_eq!(out["all"], json!(["alpha", "beta", "gamma"]));
    let conf = &out["get"]["Configuration"];
    assert_eq!(conf["FunctionName"], "alpha");
    assert_eq!(
        conf["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:alpha"
    );
    assert_eq!(conf["Runtime"], "provided");
    assert_eq!(
        conf["Handler"], "sh handler.sh",
        "the bundle's fprocess: {conf}"
    );
    assert_eq!(conf["Timeout"], 3, "2.5 s rounded up");
    assert_eq!(conf["MemorySize"], 512);
    assert_eq!(conf["Version"], "$LATEST");
    assert_eq!(conf["PackageType"], "Zip");
    let vars = &conf["Environment"]["Variables"];
    assert_eq!(vars, &json!({"GREETING": "hi", "exec_timeout": "2500ms"}));
    let modified = conf["LastModified"].as_str().unwrap();
    assert!(modified.ends_with("+0000"), "{modified}");
    assert_eq!(out["get"]["Code"]["RepositoryType"], "Bundle");
    let location = out["get"]["Code"]["Location"].as_str().unwrap();
    assert!(
        location.starts_with("virga.local/alpha@sha256:"),
        "{location}"
    );
    assert_eq!(out["get"]["Tags"], json!({"team": "blue"}));
    assert_eq!(out["arn"], "alpha");
    assert_eq!(out["missing"]["code"], "ResourceNotFoundException");
    assert_eq!(
        out["same"], true,
        "GetFunctionConfiguration = GetFunction's Configuration"
    );
    // boto3 checks MaxItems itself; curl does not.
    let r = p
        .sys(Method::GET, "/2015-03-31/functions/?MaxItems=0")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "InvalidParameterValueException"
    );
}
