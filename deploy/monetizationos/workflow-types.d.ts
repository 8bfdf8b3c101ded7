/**
 * The parts of the MonetizationOS workflow API that link-identities.ts uses,
 * copied from the MonetizationOS documentation so the workflow can be
 * type-checked and tested outside the MonetizationOS editor.
 *
 * Each declaration names the page it comes from (under
 * https://docs.monetizationos.com/docs/api-reference/workflows/) and says how
 * much of it that page shows. Some type-definition pages were not in the copy
 * of the docs we could read (their names are linked from pages we did read);
 * what we declare for those is marked UNCONFIRMED and is listed, with the
 * reason for each choice, in README.md ("What the docs leave open"). In the
 * MonetizationOS editor the workflow is checked against the real definitions:
 * where they differ from this file, the editor is right; change this file to
 * match, then the workflow and its tests.
 *
 * Parameter names are the pages' (`identifier`) except `args`, which is ours.
 */

/**
 * WorkflowUserIdentifier: a user or session, as every identity utility takes it.
 *
 * UNCONFIRMED as a whole: the page type-definitions/WorkflowUserIdentifier was
 * not in our copy. The shape is put together from pages we read:
 * - type-definitions/ActionWorkflowIdentity:
 *   `type ActionWorkflowIdentity = WorkflowUserIdentifier & { testGroup100: number; }`;
 * - type-definitions/WorkflowIdentity: `identifier: string;`,
 *   `userType: "authenticated" | "anonymous";` (WorkflowIdentity also has
 *   authType, jwtClaims and testGroup100, which ActionWorkflowIdentity adds or
 *   drops, so they are not part of WorkflowUserIdentifier);
 * - type-definitions/ReadIdentityLinksWorkflowUtils, example:
 *   `utils.identity.getLinkedTargets({ identifier: 'member_1234', userType: 'authenticated' })`.
 */
export type WorkflowUserIdentifier = {
  identifier: string;
  userType: "authenticated" | "anonymous";
};

/**
 * IdentityLinkWorkflowData: one identity link, as getLinkedTargets returns it.
 *
 * UNCONFIRMED: the page type-definitions/IdentityLinkWorkflowData was not in
 * our copy. Only the field the workflow reads is declared. `target` is the
 * recipe's `link.<lost>.<lost> === userIdentifier` (recipes/link-identities-endpoint,
 * identifiers lost) read with the words of ReadIdentityLinksWorkflowUtils
 * ("an array of link data where the user is the source", so the other end is
 * the target) and with the `{ identifier, userType }` shape the recipe gives
 * the link's source and target when it creates one.
 */
export type IdentityLinkWorkflowData = {
  target: WorkflowUserIdentifier;
};

/**
 * ReadIdentityLinksWorkflowUtils, from type-definitions/ReadIdentityLinksWorkflowUtils
 * ("Utilities for reading identity links associated with a user"). The page:
 *
 *   type ReadIdentityLinksWorkflowUtils = {
 *     getLinkedSources: (identifier) => Promise<IdentityLinkWorkflowData[]>;
 *     getLinkedTargets: (identifier) => Promise<IdentityLinkWorkflowData[]>;
 *   };
 *
 * with `identifier: WorkflowUserIdentifier` for both. Only getLinkedTargets is
 * used, so only it is declared.
 */
export type ReadIdentityLinksWorkflowUtils = {
  /**
   * "Retrieves all target links that have been linked to the specified source
   * identity." Resolves to "an array of link data where the user is the source".
   */
  getLinkedTargets: (identifier: WorkflowUserIdentifier) => Promise<IdentityLinkWorkflowData[]>;
};

/**
 * How a link treats the source identity's data. The recipe creates a link
 * with `"copy_once"`; no page we read lists the other values, so this is the
 * one value the recipe shows.
 */
export type IdentityLinkStrategy = "copy_once";

/**
 * The argument of the create-link call.
 *
 * UNCONFIRMED: it is declared on type-definitions/WriteIdentityLinksWorkflowUtils,
 * which was not in our copy. The recipe (recipes/link-identities-endpoint) shows
 * the values and lost the keys:
 *
 *   await <lost>.<lost>({
 *     <lost>: "copy_once",
 *     <lost>: { <lost>: anonymousIdentifier, <lost>: "anonymous" },
 *     <lost>: { <lost>: userIdentifier, <lost>: "authenticated" },
 *     <lost>: "conversion",
 *     <lost>: { <lost>: false },
 *   });
 *
 * - `source` / `target`: the words ReadIdentityLinksWorkflowUtils uses for the
 *   two ends of a link; their values have the WorkflowUserIdentifier shape.
 * - `strategy` / `reason`: our names for the first and fourth keys.
 * - The fifth key (an options object with one flag, `false` in the recipe) is
 *   not declared and the workflow does not pass it; see README.md.
 */
export type CreateIdentityLinkArgs = {
  strategy: IdentityLinkStrategy;
  source: WorkflowUserIdentifier;
  target: WorkflowUserIdentifier;
  /** The recipe's reason for a sign-up or log-in; the only value it shows. */
  reason: "conversion";
};

/**
 * WriteIdentityLinksWorkflowUtils: named, not shown, by
 * type-definitions/WriteIdentityWorkflowUtils:
 *
 *   type WriteIdentityWorkflowUtils = WriteIdentityLinksWorkflowUtils & {
 *     deleteCustomData: ...; incrementCounter: ...; writeCustomData: ...;
 *   };
 *
 * UNCONFIRMED: the method name `createLink` and its result. The workflow
 * ignores the result, so it is `unknown` here.
 */
export type WriteIdentityLinksWorkflowUtils = {
  createLink: (args: CreateIdentityLinkArgs) => Promise<unknown>;
};

/**
 * What an Endpoint workflow finds in `utils.identity`: reading and writing
 * identity links.
 *
 * Our name. The real type is whatever EndpointWorkflowArgs gives `utils`;
 * that page's property table was not in our copy. That an Endpoint workflow
 * gets the write utilities at all is what the recipe does (it creates a link
 * from an Endpoint); type-definitions/ReadonlyIdentityWorkflowUtils shows the
 * read-only variant other workflows get, where every WriteIdentityWorkflowUtils
 * member is `never`:
 *
 *   type ReadonlyIdentityWorkflowUtils = { [P in keyof WriteIdentityWorkflowUtils]?: never }
 *     & ReadIdentityLinksWorkflowUtils & { readCustomData: ...; resolveJwt: ...; };
 */
export type EndpointIdentityUtils = ReadIdentityLinksWorkflowUtils & WriteIdentityLinksWorkflowUtils;

/**
 * EndpointWorkflowArgs, from endpoint-workflows ("Arguments: See
 * EndpointWorkflowArgs"). Its usage example destructures `request`, a Web API
 * Request. `utils` is UNCONFIRMED for Endpoint workflows: the property table
 * was not in our copy; the name is the one every identity-utility example on
 * the type-definition pages uses (`utils.identity.getLinkedTargets(...)`,
 * `utils.identity.writeCustomData(...)`), and the recipe's handler
 * destructures two arguments (`async ({ <lost>, <lost> })`), one holding the
 * identity utilities. Other arguments are not declared (unused).
 */
export type EndpointWorkflowArgs = {
  /** The incoming HTTP request; the workflow reads its JSON body with `request.json()`. */
  request: Request;
  utils: {
    identity: EndpointIdentityUtils;
  };
};

/**
 * EndpointWorkflowResult, from endpoint-workflows: "a standard Web API
 * Response object. Can return any valid Response with custom status, headers,
 * and body", for example with `Response.json()`.
 */
export type EndpointWorkflowResult = Response;

/**
 * EndpointWorkflow, from endpoint-workflows, whose usage is
 * `const workflow: EndpointWorkflow = async ({ request }: EndpointWorkflowArgs): Promise<EndpointWorkflowResult> => { ... }; export default workflow;`
 */
export type EndpointWorkflow = (args: EndpointWorkflowArgs) => Promise<EndpointWorkflowResult>;
