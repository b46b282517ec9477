// Validates custom resources against the schemas of their CRDs (kubernetes-models compiles them from the
// projects' published CRDs). Reads a JSON list of objects on stdin; prints one JSON line per object,
// {"kind", "name", "error"} with error null when valid. Exit 0 unless an object's kind is unknown here.
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const models = { "monitoring.coreos.com/v1": monitoring, "keda.sh/v1alpha1": keda };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let unknown = false;
for (const object of JSON.parse(Buffer.concat(chunks).toString())) {
  const Model = models[object.apiVersion]?.[object.kind];
  const name = object.metadata?.name ?? null;
  if (!Model) {
    unknown = true;
    console.log(JSON.stringify({ kind: object.kind, name, error: `no schema here for ${object.apiVersion} ${object.kind}` }));
    continue;
  }
  let error = null;
  try {
    new Model(object).validate();
  } catch (caught) {
    error = caught.message;
  }
  console.log(JSON.stringify({ kind: object.kind, name, error }));
}
process.exit(unknown ? 1 : 0);
