package dk.medcom.eds.compat;
public class Hello { public static void main(String[] a) { System.out.println(ca.uhn.fhir.context.FhirContext.forR4().getVersion().getVersion()); } }
