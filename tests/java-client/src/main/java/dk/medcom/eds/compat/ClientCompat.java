package dk.medcom.eds.compat;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.api.MethodOutcome;
import ca.uhn.fhir.rest.api.PreferReturnEnum;
import ca.uhn.fhir.rest.api.SearchStyleEnum;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.api.ServerValidationModeEnum;
import ca.uhn.fhir.rest.client.interceptor.BearerTokenAuthInterceptor;
import ca.uhn.fhir.rest.gclient.IQuery;
import ca.uhn.fhir.rest.gclient.StringClientParam;
import ca.uhn.fhir.rest.gclient.TokenClientParam;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Objects;
import java.util.TreeSet;
import java.util.function.Function;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClients;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.IdType;

/**
 * HAPI FHIR's own generic client (the one Java stations use) against eds-proxy, each call
 * repeated straight against the HAPI server behind it and compared field by field: status
 * (the client throws on errors), Bundle type, total, link relations, entry ids, resource ids
 * and versions, and the resource bodies. Straight calls add the `_security` constraint the
 * proxy adds, so both sides search the same records.
 *
 * <p>Environment: PROXY_BASE, HAPI_BASE, CA_PEM, CERT_PEM, KEY_PEM (files of the dev PKI),
 * STATION_TOKEN, CITIZEN_TOKEN, DEVICE_LABEL and CPR_LABEL (system|code of the proxy's labels),
 * REGISTRATION (a registration JSON file), SENDER_SOR. Exit status 0 when every comparison
 * holds; every comparison is printed.
 */
public final class ClientCompat {
    private static final FhirContext CTX = FhirContext.forR4();
    private static int failures = 0;
    private static int checks = 0;

    public static void main(String[] args) throws Exception {
        String proxyBase = env("PROXY_BASE");
        String hapiBase = env("HAPI_BASE");
        CTX.getRestfulClientFactory().setServerValidationMode(ServerValidationModeEnum.NEVER);
        CTX.getRestfulClientFactory().setHttpClient(mtlsClient());
        IGenericClient station = CTX.newRestfulGenericClient(proxyBase);
        station.registerInterceptor(new BearerTokenAuthInterceptor(env("STATION_TOKEN")));
        IGenericClient citizen = CTX.newRestfulGenericClient(proxyBase);
        citizen.registerInterceptor(new BearerTokenAuthInterceptor(env("CITIZEN_TOKEN")));
        IGenericClient direct = CTX.newRestfulGenericClient(hapiBase);
        String[] device = env("DEVICE_LABEL").split("\\|", 2);
        String[] cpr = env("CPR_LABEL").split("\\|", 2);
        String registration = Files.readString(Path.of(env("REGISTRATION")));

        // capabilities
        CapabilityStatement pc = station.capabilities().ofType(CapabilityStatement.class).execute();
        CapabilityStatement dc = direct.capabilities().ofType(CapabilityStatement.class).execute();
        same("capabilities fhirVersion", pc.getFhirVersion(), dc.getFhirVersion());
        TreeSet<String> proxyParams = new TreeSet<>();
        pc.getRestFirstRep().getResource().stream()
                .filter(r -> r.getType().equals("AuditEvent"))
                .forEach(r -> r.getSearchParam().forEach(p -> proxyParams.add(p.getName())));
        // HAPI's own statement does not list SearchParameters installed at run time (it is
        // built once); the proxy's lists every IG parameter it lets through, and the searches
        // below prove HAPI serves them.
        for (String ig : List.of("cpr", "message-id", "sender-sor", "receiver-sor", "participant-sor",
                "ehmiMessageType", "senderOrg", "receiverOrg")) {
            same("proxy capabilities list " + ig, true, proxyParams.contains(ig));
        }
        same("proxy capabilities: conditional read", "full-support",
                pc.getRestFirstRep().getResource().get(0).getConditionalRead().toCode());

        // create (five, so searches page)
        List<String> ids = new ArrayList<>();
        MethodOutcome first = null;
        for (int i = 0; i < 5; i++) {
            MethodOutcome mo = station.create().resource(parse(registration)).execute();
            if (first == null) {
                first = mo;
            }
            ids.add(mo.getId().getIdPart());
        }
        String id = ids.get(0);
        AuditEvent stored = direct.read().resource(AuditEvent.class).withId(id).execute();
        AuditEvent copy = stored.copy();
        copy.setId((String) null);
        copy.getMeta().setVersionId(null).setLastUpdated(null);
        MethodOutcome dmo = direct.create().resource(copy).execute();
        same("create created", first.getCreated(), dmo.getCreated());
        same("create id base", proxyBase, first.getId().getBaseUrl());
        same("create id type", dmo.getId().getResourceType(), first.getId().getResourceType());
        same("create version", dmo.getId().getVersionIdPart(), first.getId().getVersionIdPart());
        same("create returns the resource", dmo.getResource() != null, first.getResource() != null);
        same("create resource id", first.getId().getIdPart(),
                first.getResource() == null ? null : first.getResource().getIdElement().getIdPart());

        // read and vread
        AuditEvent pr = station.read().resource(AuditEvent.class).withId(id).execute();
        AuditEvent dr = direct.read().resource(AuditEvent.class).withId(id).execute();
        compareResource("read", pr, dr, proxyBase, hapiBase);
        IdType v1 = new IdType("AuditEvent", id, "1");
        compareResource("vread",
                station.read().resource(AuditEvent.class).withId(v1).execute(),
                direct.read().resource(AuditEvent.class).withId(v1).execute(), proxyBase, hapiBase);

        // conditional read (If-None-Match): 304 → null
        same("conditional read, same version → 304",
                direct.read().resource(AuditEvent.class).withId(id).ifVersionMatches("1").returnNull().execute() == null,
                station.read().resource(AuditEvent.class).withId(id).ifVersionMatches("1").returnNull().execute() == null);
        same("conditional read, other version → 200",
                direct.read().resource(AuditEvent.class).withId(id).ifVersionMatches("7").returnNull().execute() == null,
                station.read().resource(AuditEvent.class).withId(id).ifVersionMatches("7").returnNull().execute() == null);

        // searches in every style, paged next to the end and previous back
        String sor = env("SENDER_SOR");
        for (SearchStyleEnum style : SearchStyleEnum.values()) {
            Function<IGenericClient, IQuery<Bundle>> q = c -> c.search().forResource(AuditEvent.class)
                    .where(new StringClientParam("sender-sor").matchesExactly().value(sor))
                    .and(new TokenClientParam("ehmiMessageType").exactly().code("HomeCareObservation"))
                    .sort().ascending("_id")
                    .count(2)
                    .usingStyle(style)
                    .returnBundle(Bundle.class);
            Bundle pb = q.apply(station).execute();
            Bundle db = q.apply(direct)
                    .and(new TokenClientParam("_security").exactly().systemAndCode(device[0], device[1]))
                    .execute();
            comparePaging("station search " + style, station, direct, pb, db);
        }

        // Prefer: return=minimal
        MethodOutcome pm = station.create().resource(parse(registration)).prefer(PreferReturnEnum.MINIMAL).execute();
        AuditEvent copy2 = copy.copy();
        MethodOutcome dm = direct.create().resource(copy2).prefer(PreferReturnEnum.MINIMAL).execute();
        same("minimal create: no resource", dm.getResource() == null, pm.getResource() == null);
        same("minimal create: created", dm.getCreated(), pm.getCreated());
        same("minimal create: id base", proxyBase, pm.getId().getBaseUrl());
        same("minimal create: version", dm.getId().getVersionIdPart(), pm.getId().getVersionIdPart());

        // a citizen's search and paging
        Bundle cb = citizen.search().forResource(AuditEvent.class)
                .sort().ascending("_id").count(3).returnBundle(Bundle.class).execute();
        Bundle cd = direct.search().forResource(AuditEvent.class)
                .where(new TokenClientParam("_security").exactly().systemAndCode(cpr[0], cpr[1]))
                .sort().ascending("_id").count(3).returnBundle(Bundle.class).execute();
        comparePaging("citizen search", citizen, direct, cb, cd);

        System.out.println("checks: " + checks + ", mismatches: " + failures);
        System.exit(failures == 0 ? 0 : 1);
    }

    private static void comparePaging(String what, IGenericClient pc, IGenericClient dc, Bundle pb, Bundle db) {
        List<List<String>> proxyPages = new ArrayList<>();
        List<List<String>> directPages = new ArrayList<>();
        int page = 0;
        while (true) {
            compareBundle(what + " page " + page, pb, db);
            proxyPages.add(entryIds(pb));
            directPages.add(entryIds(db));
            boolean pn = pb.getLink(Bundle.LINK_NEXT) != null;
            boolean dn = db.getLink(Bundle.LINK_NEXT) != null;
            same(what + " page " + page + " has next", dn, pn);
            if (!pn || !dn || page > 20) {
                break;
            }
            pb = pc.loadPage().next(pb).execute();
            db = dc.loadPage().next(db).execute();
            page++;
        }
        same(what + " pages next", directPages, proxyPages);
        if (page == 0) {
            fail(what + ": only one page; paging not exercised");
        }
        List<List<String>> proxyBack = new ArrayList<>();
        List<List<String>> directBack = new ArrayList<>();
        while (pb.getLink(Bundle.LINK_PREV) != null || pb.getLink("prev") != null) {
            pb = pc.loadPage().previous(pb).execute();
            db = dc.loadPage().previous(db).execute();
            compareBundle(what + " back", pb, db);
            proxyBack.add(entryIds(pb));
            directBack.add(entryIds(db));
            if (proxyBack.size() > 20) {
                break;
            }
        }
        same(what + " pages previous", directBack, proxyBack);
        same(what + " previous walks back to the first page", proxyPages.get(0),
                proxyBack.isEmpty() ? null : proxyBack.get(proxyBack.size() - 1));
    }

    private static void compareBundle(String what, Bundle p, Bundle d) {
        same(what + " type", d.getType(), p.getType());
        same(what + " total", d.hasTotal() ? d.getTotal() : null, p.hasTotal() ? p.getTotal() : null);
        same(what + " entry ids", entryIds(d), entryIds(p));
        TreeSet<String> pl = new TreeSet<>();
        p.getLink().forEach(l -> pl.add(l.getRelation()));
        TreeSet<String> dl = new TreeSet<>();
        d.getLink().forEach(l -> dl.add(l.getRelation()));
        same(what + " link relations", dl, pl);
        for (Bundle.BundleEntryComponent e : p.getEntry()) {
            if (e.getFullUrl() != null && !e.getFullUrl().startsWith(env("PROXY_BASE") + "/")) {
                fail(what + " fullUrl not on the proxy's base: " + e.getFullUrl());
            }
        }
    }

    private static List<String> entryIds(Bundle b) {
        List<String> out = new ArrayList<>();
        b.getEntry().forEach(e -> out.add(e.getResource().getIdElement().toUnqualified().getValue()));
        return out;
    }

    private static void compareResource(String what, AuditEvent p, AuditEvent d, String proxyBase, String hapiBase) {
        same(what + " id", d.getIdElement().toUnqualified().getValue(), p.getIdElement().toUnqualified().getValue());
        same(what + " id base", proxyBase, p.getIdElement().getBaseUrl());
        same(what + " version", d.getMeta().getVersionId(), p.getMeta().getVersionId());
        same(what + " lastUpdated", d.getMeta().getLastUpdatedElement().getValueAsString(),
                p.getMeta().getLastUpdatedElement().getValueAsString());
        var parser = CTX.newJsonParser().setOmitResourceId(true);
        same(what + " body", parser.encodeResourceToString(d), parser.encodeResourceToString(p));
    }

    private static AuditEvent parse(String json) {
        return CTX.newJsonParser().parseResource(AuditEvent.class, json);
    }

    private static void same(String what, Object direct, Object proxy) {
        checks++;
        if (Objects.equals(direct, proxy)) {
            System.out.println("ok   " + what + ": " + shorten(proxy));
        } else {
            fail(what + ": HAPI " + shorten(direct) + " / proxy " + shorten(proxy));
        }
    }

    private static void fail(String what) {
        failures++;
        System.out.println("FAIL " + what);
    }

    private static String shorten(Object o) {
        String s = String.valueOf(o);
        return s.length() > 160 ? s.substring(0, 160) + "…" : s;
    }

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null) {
            throw new IllegalStateException("missing environment variable " + name);
        }
        return v;
    }

    /** An HTTP client presenting the dev PKI's client certificate and trusting its CA. */
    private static CloseableHttpClient mtlsClient() throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        Certificate ca = cf.generateCertificate(new ByteArrayInputStream(Files.readAllBytes(Path.of(env("CA_PEM")))));
        Certificate cert = cf.generateCertificate(new ByteArrayInputStream(Files.readAllBytes(Path.of(env("CERT_PEM")))));
        String pem = Files.readString(Path.of(env("KEY_PEM")), StandardCharsets.US_ASCII)
                .replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
        byte[] der = Base64.getDecoder().decode(pem);
        PrivateKey key;
        try {
            key = KeyFactory.getInstance("EC").generatePrivate(new PKCS8EncodedKeySpec(der));
        } catch (java.security.spec.InvalidKeySpecException e) {
            key = KeyFactory.getInstance("RSA").generatePrivate(new PKCS8EncodedKeySpec(der));
        }
        char[] pw = "compat".toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        ks.setKeyEntry("client", key, pw, new Certificate[] {cert});
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, pw);
        KeyStore ts = KeyStore.getInstance("PKCS12");
        ts.load(null, null);
        ts.setCertificateEntry("ca", ca);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ssl = SSLContext.getInstance("TLS");
        ssl.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        return HttpClients.custom().setSSLContext(ssl).build();
    }
}
