// Behaviour of the workflow against an in-memory stand-in for the platform's
// `utils.identity`. The stand-in implements the declared MonetizationOS types
// (workflow-types.d.ts), so tsc fails here when those declarations change.
// Run: `npm test` here (compiles with tsc, then `node --test`).
import assert from "node:assert/strict";
import { test } from "node:test";

import linkIdentities from "./link-identities.js";
import type {
  CreateIdentityLinkArgs,
  EndpointIdentityUtils,
  EndpointWorkflowArgs,
  IdentityLinkWorkflowData,
  WorkflowUserIdentifier,
} from "./workflow-types";

/** A stored link: what createLink was given. */
type StoredLink = CreateIdentityLinkArgs;

class FakeIdentity implements EndpointIdentityUtils {
  readonly links: StoredLink[] = [];
  /** Every call, in order, with its argument. */
  readonly calls: Array<
    | { method: "getLinkedTargets"; identifier: WorkflowUserIdentifier }
    | { method: "createLink"; args: CreateIdentityLinkArgs }
  > = [];
  failCheck = false;
  failCreate = false;
  /** When set, getLinkedTargets reads the links, then waits for this before answering. */
  checkGate: Promise<void> | undefined;

  async getLinkedTargets(identifier: WorkflowUserIdentifier): Promise<IdentityLinkWorkflowData[]> {
    this.calls.push({ method: "getLinkedTargets", identifier });
    if (this.failCheck) throw new Error("platform unavailable for anon-1");
    // "link data where the user is the source"
    const found = this.links.filter(
      (l) =>
        l.source.identifier === identifier.identifier && l.source.userType === identifier.userType,
    );
    if (this.checkGate) await this.checkGate;
    return found;
  }

  async createLink(args: CreateIdentityLinkArgs): Promise<void> {
    this.calls.push({ method: "createLink", args });
    if (this.failCreate) throw new Error("platform unavailable for user-1");
    this.links.push(args);
  }

  creates(): number {
    return this.calls.filter((c) => c.method === "createLink").length;
  }
}

function post(body: string): Request {
  return new Request("https://mos.test/api/v1/envs/test/endpoints/link-identities", {
    method: "POST",
    headers: { "content-type": "application/json", "x-mos-key": "Bearer sk_test" },
    body,
  });
}

async function call(
  identity: FakeIdentity,
  body: unknown,
): Promise<{ status: number; json: unknown }> {
  const raw = typeof body === "string" ? body : JSON.stringify(body);
  const args: EndpointWorkflowArgs = { request: post(raw), utils: { identity } };
  const res = await linkIdentities(args);
  return { status: res.status, json: await res.json() };
}

const pair = { anonymousIdentifier: "anon-1", userIdentifier: "user-1" };

const expectedLink: CreateIdentityLinkArgs = {
  strategy: "copy_once",
  source: { identifier: "anon-1", userType: "anonymous" },
  target: { identifier: "user-1", userType: "authenticated" },
  reason: "conversion",
};

test("no link yet: checks the anonymous identity, creates one copy_once conversion link", async () => {
  const identity = new FakeIdentity();
  const res = await call(identity, pair);
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { message: "Success", outcome: "created" });
  assert.deepEqual(identity.calls, [
    { method: "getLinkedTargets", identifier: { identifier: "anon-1", userType: "anonymous" } },
    { method: "createLink", args: expectedLink },
  ]);
  assert.deepEqual(identity.links, [expectedLink]);
});

test("link exists: answers already_linked and creates nothing", async () => {
  const identity = new FakeIdentity();
  identity.links.push(expectedLink); // made earlier, e.g. by the recipe's own workflow
  const res = await call(identity, pair);
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { message: "Success", outcome: "already_linked" });
  assert.equal(identity.creates(), 0);
  assert.equal(identity.links.length, 1);
});

test("a retry of the same pair (at-least-once delivery) creates no second link", async () => {
  const identity = new FakeIdentity();
  assert.deepEqual((await call(identity, pair)).json, { message: "Success", outcome: "created" });
  assert.deepEqual((await call(identity, pair)).json, {
    message: "Success",
    outcome: "already_linked",
  });
  assert.equal(identity.creates(), 1);
});

test("the same anonymous identity linked to another user: a second link", async () => {
  const identity = new FakeIdentity();
  await call(identity, pair);
  const res = await call(identity, { ...pair, userIdentifier: "user-2" });
  assert.deepEqual(res.json, { message: "Success", outcome: "created" });
  assert.deepEqual(
    identity.links.map((l) => l.target.identifier),
    ["user-1", "user-2"],
  );
});

test("the same identifier on both sides: two distinct identities, linked like any pair", async () => {
  // anonymous "same-id" and authenticated "same-id" differ by userType; the
  // workflow (like the recipe and mos-sim) does not special-case them.
  const identity = new FakeIdentity();
  const same = { anonymousIdentifier: "same-id", userIdentifier: "same-id" };
  const first = await call(identity, same);
  assert.deepEqual(first.json, { message: "Success", outcome: "created" });
  assert.deepEqual(identity.links, [
    {
      strategy: "copy_once",
      source: { identifier: "same-id", userType: "anonymous" },
      target: { identifier: "same-id", userType: "authenticated" },
      reason: "conversion",
    },
  ]);
  assert.deepEqual((await call(identity, same)).json, {
    message: "Success",
    outcome: "already_linked",
  });
});

test("a link from another identity with the same identifier does not count", async () => {
  const identity = new FakeIdentity();
  // authenticated "anon-1" -> "user-1": not a link from the anonymous identity
  identity.links.push({
    ...expectedLink,
    source: { identifier: "anon-1", userType: "authenticated" },
  });
  const res = await call(identity, pair);
  assert.deepEqual(res.json, { message: "Success", outcome: "created" });
  assert.equal(identity.creates(), 1);
});

test("missing, empty and non-string identifiers: 400 and no platform call", async () => {
  const bodies: unknown[] = [
    {}, // what `identity-link-worker check-config` sends
    { anonymousIdentifier: "anon-1" },
    { userIdentifier: "user-1" },
    { anonymousIdentifier: "", userIdentifier: "user-1" },
    { anonymousIdentifier: "anon-1", userIdentifier: "   " },
    { anonymousIdentifier: 42, userIdentifier: "user-1" },
    { anonymousIdentifier: "anon-1", userIdentifier: null },
  ];
  for (const body of bodies) {
    const identity = new FakeIdentity();
    const res = await call(identity, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.deepEqual(res.json, {
      message: "'anonymousIdentifier' and 'userIdentifier' are required",
    });
    assert.deepEqual(identity.calls, [], "no platform call for a bad request");
  }
});

test("a body that is not a JSON object: 400 and no platform call", async () => {
  for (const body of ["not json", "", "[1,2]", "null", '"text"']) {
    const identity = new FakeIdentity();
    const res = await call(identity, body);
    assert.equal(res.status, 400, body);
    assert.deepEqual(res.json, { message: "the request body must be a JSON object" });
    assert.deepEqual(identity.calls, []);
  }
});

test("create fails: 503 (the worker retries it), nothing counted as created", async (t) => {
  const logged = t.mock.method(console, "error", () => {});
  const identity = new FakeIdentity();
  identity.failCreate = true;
  const res = await call(identity, pair);
  assert.equal(res.status, 503);
  assert.deepEqual(res.json, {
    message: "the identity link could not be checked or created; try again",
  });
  assert.equal(identity.links.length, 0);
  assert.equal(logged.mock.callCount(), 1);
  const line = String(logged.mock.calls[0]?.arguments[0]);
  assert.match(line, /create step failed \(Error\)/);
  assert.doesNotMatch(line, /anon-1|user-1/, "the log line carries no identifier");

  // The retry, once the platform is back, creates the link.
  identity.failCreate = false;
  assert.deepEqual((await call(identity, pair)).json, { message: "Success", outcome: "created" });
  assert.deepEqual(identity.links, [expectedLink]);
});

test("check fails: 503 and no create", async (t) => {
  const logged = t.mock.method(console, "error", () => {});
  const identity = new FakeIdentity();
  identity.failCheck = true;
  const res = await call(identity, pair);
  assert.equal(res.status, 503);
  assert.equal(identity.creates(), 0);
  const line = String(logged.mock.calls[0]?.arguments[0]);
  assert.match(line, /check step failed \(Error\)/);
  assert.doesNotMatch(line, /anon-1|user-1/);
});

test("race: two overlapping calls for one new pair both create (why the worker serialises per anonymous id)", async () => {
  // Check and create are two platform calls, as in the recipe; nothing in
  // the documented API makes them one. mos-sim reproduces this window.
  const identity = new FakeIdentity();
  let open!: () => void;
  identity.checkGate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const both = Promise.all([call(identity, pair), call(identity, pair)]);
  // Let both checks read "no link" before either creates.
  for (let turn = 0; identity.calls.length < 2 && turn < 100; turn++) {
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(identity.calls.length, 2, "both calls are checking");
  open();
  const answers = await both;
  assert.deepEqual(
    answers.map((a) => a.json),
    [
      { message: "Success", outcome: "created" },
      { message: "Success", outcome: "created" },
    ],
  );
  assert.equal(identity.links.length, 2, "a duplicate link: the race the worker prevents");
});
