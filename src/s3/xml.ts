/**
 * s3/xml — the little XML S3 speaks: writing responses, and reading the two request bodies a gateway
 * must parse (DeleteObjects, CompleteMultipartUpload). Not a general XML parser: elements, text,
 * the five named entities and numeric references; declarations, comments and attributes are skipped.
 * Bounded in input size, depth and element count, because the body comes from the network.
 */
import { S3Error } from './errors.js';

export const S3_NAMESPACE = 'http://s3.amazonaws.com/doc/2006-03-01/';
/** Largest XML request body accepted (1,000 keys of 1,024 bytes each, with their markup, fit). */
export const MAX_XML_BODY_BYTES = 2 << 20;
const MAX_DEPTH = 16;
const MAX_ELEMENTS = 20_000;

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) =>
    c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '&' ? '&amp;' : c === '"' ? '&quot;' : '&apos;',
  );
}

/** A child element, or several, or none (undefined / false / null are left out). */
export type XmlContent = string | number | boolean | XmlNode | null | undefined | readonly XmlContent[];
export interface XmlNode {
  readonly name: string;
  readonly content: XmlContent;
}

export function el(name: string, ...content: XmlContent[]): XmlNode {
  return { name, content };
}

function render(content: XmlContent, out: string[]): void {
  if (content === null || content === undefined) return;
  if (typeof content === 'string') out.push(escapeXml(content));
  else if (typeof content === 'number' || typeof content === 'boolean') out.push(String(content));
  else if (Array.isArray(content)) for (const c of content as readonly XmlContent[]) render(c, out);
  else {
    const node = content as XmlNode;
    out.push(`<${node.name}>`);
    render(node.content, out);
    out.push(`</${node.name}>`);
  }
}

export const XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n';

/** A response's root element, carrying S3's namespace (no declaration). */
export function xmlRoot(root: XmlNode): string {
  const out = [`<${root.name} xmlns="${S3_NAMESPACE}">`];
  render(root.content, out);
  out.push(`</${root.name}>`);
  return out.join('');
}

/** A whole response document. */
export function xmlDocument(root: XmlNode): string {
  return XML_DECLARATION + xmlRoot(root);
}

/** The body of an error response (also written inside a 200 once a long request has begun answering). */
export function errorElement(code: string, message: string, resource: string, requestId: string): string {
  const out: string[] = [];
  render(
    el(
      'Error',
      el('Code', code),
      el('Message', message),
      el('Resource', resource),
      el('RequestId', requestId),
    ),
    out,
  );
  return out.join('');
}

export interface XmlElement {
  readonly name: string;
  readonly children: XmlElement[];
  text: string;
}

/** The children of `parent` named `name`. */
export function childrenNamed(parent: XmlElement, name: string): XmlElement[] {
  return parent.children.filter((c) => c.name === name);
}

/** The text of the first child named `name`, or undefined. */
export function childText(parent: XmlElement, name: string): string | undefined {
  return parent.children.find((c) => c.name === name)?.text;
}

function decodeEntities(raw: string): string {
  return raw.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, ref: string) => {
    if (ref[0] === '#') {
      const code = ref[1] === 'x' ? Number.parseInt(ref.slice(2), 16) : Number.parseInt(ref.slice(1), 10);
      if (!Number.isInteger(code) || code < 1 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
        throw new S3Error('MalformedXML', `invalid character reference ${whole}`);
      return String.fromCodePoint(code);
    }
    const named = NAMED_ENTITIES[ref];
    if (named === undefined) throw new S3Error('MalformedXML', `unknown entity ${whole}`);
    return named;
  });
}

const NAMED_ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/** Parses a request body into its root element; MalformedXML for anything it cannot read. */
export function parseXml(text: string): XmlElement {
  if (text.length > MAX_XML_BODY_BYTES) throw new S3Error('MalformedXML', 'XML body too large');
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let elements = 0;
  let i = 0;
  while (i < text.length) {
    const lt = text.indexOf('<', i);
    const chunk = lt < 0 ? text.slice(i) : text.slice(i, lt);
    if (chunk.length > 0) {
      const top = stack[stack.length - 1];
      if (top === undefined) {
        if (chunk.trim() !== '') throw new S3Error('MalformedXML', 'text outside the root element');
      } else top.text += decodeEntities(chunk);
    }
    if (lt < 0) break;
    if (text.startsWith('<?', lt)) {
      const end = text.indexOf('?>', lt);
      if (end < 0) throw new S3Error('MalformedXML', 'unterminated declaration');
      i = end + 2;
    } else if (text.startsWith('<!--', lt)) {
      const end = text.indexOf('-->', lt);
      if (end < 0) throw new S3Error('MalformedXML', 'unterminated comment');
      i = end + 3;
    } else if (text.startsWith('<![CDATA[', lt)) {
      const end = text.indexOf(']]>', lt);
      const top = stack[stack.length - 1];
      if (end < 0 || top === undefined) throw new S3Error('MalformedXML', 'misplaced CDATA');
      top.text += text.slice(lt + 9, end);
      i = end + 3;
    } else if (text.startsWith('<!', lt)) {
      throw new S3Error('MalformedXML', 'document type declarations are not accepted');
    } else {
      const gt = text.indexOf('>', lt);
      if (gt < 0) throw new S3Error('MalformedXML', 'unterminated tag');
      const tag = text.slice(lt + 1, gt);
      i = gt + 1;
      if (tag.startsWith('/')) {
        const name = localName(tag.slice(1).trim());
        const open = stack.pop();
        if (open === undefined || open.name !== name)
          throw new S3Error('MalformedXML', `unexpected closing tag </${name}>`);
        continue;
      }
      const selfClosing = tag.endsWith('/');
      const name = localName((selfClosing ? tag.slice(0, -1) : tag).trim().split(/\s/, 1)[0] ?? '');
      if (name === '') throw new S3Error('MalformedXML', 'empty tag name');
      if (++elements > MAX_ELEMENTS) throw new S3Error('MalformedXML', `more than ${MAX_ELEMENTS} elements`);
      const element: XmlElement = { name, children: [], text: '' };
      const parent = stack[stack.length - 1];
      if (parent === undefined) {
        if (root !== undefined) throw new S3Error('MalformedXML', 'more than one root element');
        root = element;
      } else parent.children.push(element);
      if (!selfClosing) {
        stack.push(element);
        if (stack.length > MAX_DEPTH) throw new S3Error('MalformedXML', `nested deeper than ${MAX_DEPTH}`);
      }
    }
  }
  if (stack.length > 0 || root === undefined) throw new S3Error('MalformedXML', 'incomplete XML document');
  return root;
}

/** `s3:Key` → `Key`: S3 documents use one namespace, so a prefix says nothing here. */
function localName(qualified: string): string {
  const colon = qualified.indexOf(':');
  return colon < 0 ? qualified : qualified.slice(colon + 1);
}
