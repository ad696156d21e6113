// Node-RED settings for the ingress baseline: no editor, no admin API, warnings only.
module.exports = {
    uiHost: "127.0.0.1",
    httpAdminRoot: false,   // no editor or admin API: only the flow's http-in routes are served
    httpNodeRoot: "/",
    flowFile: "flows.json",
    credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { tours: false },
    telemetry: { enabled: false },
};
