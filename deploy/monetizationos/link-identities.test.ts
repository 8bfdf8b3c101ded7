// Behaviour of the workflow against an in-memory stand-in for the platform SDK.
// Run: `npm test` here (compiles with tsc, then `node --test`).
import assert from "node:assert/strict";
import { test } from "node:test";

import linkIdentities from "./link-identities.js";
import type {
  CreateIdentityLinkInput,
  IdentityLink,
  IdentityReference,
  WorkflowSdk,
} from "./workflow-types";

class FakeIdentityLinks {
  readonly links: IdentityLink[] = [];
  readonly calls: string[] = [];
  failCreate = false;

  async list(source: IdentityReference): Promise<IdentityLink[]> {
    this.calls.push(`list ${source.type}:${source.identifier}`);
    return this.links.filter(
      (l) => l.source.identifier === source.identifier && l.source.type === source.type,
    );
  }

  async create(input: CreateIdentityLinkInput): Promise<IdentityLink> {
    this.calls.push(`create ${input.source.identifier}->${input.target.identifier}`);
    if (this.failCreate) throw new Error("platform unavailable");
    const link: IdentityLink = { ...input, id: `link-${this.links.length + 1}` };
    this.links.push(link);
    return link;
  }
}

function setup(): { links: FakeIdentityLinks; sdk: WorkflowSdk } {
  const links = new FakeIdentityLinks();
  return { links, sdk: { identityLinks: links } };
}

function post(body: string): Request {
  return new Request("https://mos.test/api/v1/envs/test/endpoints/link-identities", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
}

async function call(sdk: WorkflowSdk, body: unknown): Promise<{ status: number; json: unknown }> {
  const raw = typeof body === "string" ? body : JSON.stringify(body);
  const res = await linkIdentities({ request: post(raw), sdk });
  return { status: res.status, json: await res.json() };
}

const pair = { anonymousIdentifier: "anon-1", userIdentifier: "user-1" };

test("creates a copy_once conversion link when none exists", async () => {
  const { links, sdk } = setup();
  const res = await call(sdk, pair);
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { message: "Success", outcome: "created" });
  assert.deepEqual(links.calls, ["list anonymous:anon-1", "create anon-1->user-1"]);
  assert.deepEqual(links.links[0], {
    id: "link-1",
    type: "copy_once",
    source: { identifier: "anon-1", type: "anonymous" },
    target: { identifier: "user-1", type: "authenticated" },
    reason: "conversion",
  });
});

test("answers already_linked and creates nothing when the link exists", async () => {
  const { links, sdk } = setup();
  await call(sdk, pair);
  const res = await call(sdk, pair);
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { message: "Success", outcome: "already_linked" });
  assert.equal(links.links.length, 1);
  assert.equal(links.calls.filter((c) => c.startsWith("create")).length, 1);
});

test("links the same anonymous identity to another user", async () => {
  const { links, sdk } = setup();
  await call(sdk, pair);
  const res = await call(sdk, { ...pair, userIdentifier: "user-2" });
  assert.deepEqual(res.json, { message: "Success", outcome: "created" });
  assert.equal(links.links.length, 2);
});

test("rejects missing, empty and non-string identifiers with 400", async () => {
  const bodies: unknown[] = [
    {},
    { anonymousIdentifier: "anon-1" },
    { userIdentifier: "user-1" },
    { anonymousIdentifier: "", userIdentifier: "user-1" },
    { anonymousIdentifier: "anon-1", userIdentifier: "   " },
    { anonymousIdentifier: 42, userIdentifier: "user-1" },
    { anonymousIdentifier: "anon-1", userIdentifier: null },
  ];
  for (const body of bodies) {
    const { links, sdk } = setup();
    const res = await call(sdk, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.deepEqual(res.json, {
      message: "'anonymousIdentifier' and 'userIdentifier' are required",
    });
    assert.deepEqual(links.calls, [], "no platform call for a bad request");
  }
});

test("rejects a body that is not a JSON object with 400", async () => {
  for (const body of ["not json", "[1,2]", "null", '"text"']) {
    const { links, sdk } = setup();
    const res = await call(sdk, body);
    assert.equal(res.status, 400, body);
    assert.deepEqual(res.json, { message: "the request body must be a JSON object" });
    assert.deepEqual(links.calls, []);
  }
});

test("lets a platform failure propagate (a 5xx, which the worker retries)", async () => {
  const { links, sdk } = setup();
  links.failCreate = true;
  await assert.rejects(call(sdk, pair), /platform unavailable/);
});
