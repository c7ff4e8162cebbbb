package dk.medcom.eds.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ApacheProxyAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.interceptor.ResponseHighlighterInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.orm.jpa.JpaProperties;
import org.springframework.boot.context.properties.ConfigurationProperties;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

import javax.sql.DataSource;

/**
 * The whole launcher: boots the stock HAPI FHIR JPA server (R4) published on Maven Central.
 *
 * <p>Everything HAPI-specific comes from HAPI's own Spring configuration classes: the same
 * {@link JpaR4Config}, Batch2, thread-pool and channel configurations that
 * hapi-fhir-jpaserver-starter (the source of the official {@code hapiproject/hapi} image)
 * imports, plus {@link HapiJpaConfig} for the search/paging beans the starter declares itself.
 * This class only supplies the beans an embedding application has to provide (storage and
 * partition settings, entity manager factory, transaction manager, the RestfulServer servlet),
 * built the way the starter builds them. All tunables live in {@code application.yaml}.
 */
@SpringBootApplication
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	SubscriptionChannelConfig.class, // in-memory message broker, also used by Batch2 jobs
	JpaBatch2Config.class,
	Batch2JobsConfig.class
})
public class HapiLauncher {

	public static void main(String[] args) {
		SpringApplication.run(HapiLauncher.class, args);
	}

	/**
	 * HAPI's storage settings; every JavaBean property of {@link JpaStorageSettings} can be set
	 * under {@code hapi.fhir.storage.*} (kebab-case), e.g.
	 * {@code hapi.fhir.storage.reuse-cached-search-results-for-millis=0}.
	 */
	@Bean
	@ConfigurationProperties(prefix = "hapi.fhir.storage")
	public JpaStorageSettings jpaStorageSettings() {
		return new JpaStorageSettings();
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	/** Same construction as the starter: HAPI's factory bean + Spring Boot's spring.jpa.properties. */
	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			JpaProperties jpaProperties,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setJpaPropertyMap(jpaProperties.getProperties());
		emf.setDataSource(dataSource);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviderFactory,
			IJpaSystemProvider systemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			@Value("${hapi.fhir.default_page_size:20}") int defaultPageSize,
			@Value("${hapi.fhir.max_page_size:200}") int maxPageSize,
			@Value("${hapi.fhir.use_apache_address_strategy:true}") boolean useApacheAddressStrategy,
			@Value("${hapi.fhir.use_apache_address_strategy_https:false}") boolean apacheStrategyDefaultHttps) {
		RestfulServer server = new RestfulServer(systemDao.getContext());
		server.registerProviders(resourceProviderFactory.createProviders());
		server.registerProvider(systemProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capabilities.setImplementationDescription("HAPI FHIR R4 Server");
		server.setServerConformanceProvider(capabilities);

		pagingProvider.setDefaultPageSize(defaultPageSize);
		pagingProvider.setMaximumPageSize(maxPageSize);
		server.setPagingProvider(pagingProvider);

		server.setDefaultPrettyPrint(true);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setServerAddressStrategy(
				useApacheAddressStrategy
						? new ApacheProxyAddressStrategy(apacheStrategyDefaultHttps)
						: new IncomingRequestAddressStrategy());

		server.registerInterceptor(new ResponseHighlighterInterceptor());
		LoggingInterceptor access = new LoggingInterceptor();
		access.setLoggerName("fhirtest.access");
		access.setMessageFormat(
				"Path[${servletPath}] Source[${requestHeader.x-forwarded-for}] "
						+ "Operation[${operationType} ${operationName} ${idOrResourceName}] "
						+ "UA[${requestHeader.user-agent}] Params[${requestParameters}] "
						+ "ResponseEncoding[${responseEncodingNoDefault}]");
		access.setErrorMessageFormat("ERROR - ${requestVerb} ${requestUrl}");
		access.setLogExceptions(true);
		server.registerInterceptor(access);
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer restfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(restfulServer, "/fhir/*");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
