# Airflow image for docker-compose.yaml: Airflow 3.3.2 with this repo's pinned dependencies, its code, a Java
# runtime for spark-submit (client mode: the Spark driver runs inside the scheduler container), and the Spark
# connector jars resolved once at build time, where spark/session.py looks for them.

# Temurin 17, the Java of the apache/spark 4.1.1 cluster images (also eclipse-temurin:17 based).
FROM eclipse-temurin:17.0.17_10-jre AS jre

FROM apache/airflow:3.3.2-python3.11

USER root
COPY --from=jre /opt/java/openjdk /opt/java/openjdk
ENV JAVA_HOME=/opt/java/openjdk \
    PATH=/opt/java/openjdk/bin:$PATH \
    PYTHONPATH=/opt/airflow \
    PIPELINE_STATE_DIR=/opt/pipeline/state
# The state folder holds the connector jars (below) and, on a volume, the streaming checkpoints.
RUN mkdir -p /opt/pipeline/state/jars/spark /opt/pipeline/state/checkpoints \
    && chown -R airflow:0 /opt/pipeline \
    && chmod -R g+rwX /opt/pipeline

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/pipeline/
# constraints.txt pins the whole resolved set; pyspark and pyspark-client must import together.
RUN pip install --no-cache-dir -r /opt/pipeline/requirements.txt -c /opt/pipeline/constraints.txt \
    && python -c "import airflow, pyspark.sql, elasticsearch, psycopg, kafka; print('airflow', airflow.__version__, 'pyspark', pyspark.__version__)" \
    && java -version

# Connector jars: resolved by Spark's own dependency resolver from these Maven coordinates (the same as
# spark/session.py CONNECTOR_ARTIFACTS), then only the five jars the local stack uses are kept, each checked
# against its SHA-256 and named as Maven names them. Kafka's and Hadoop's other transitive jars ship with pyspark.
ARG SPARK_PACKAGES=org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1,org.postgresql:postgresql:42.7.8
RUN python -c "from pyspark.sql import SparkSession as S; S.builder.master('local[1]').config('spark.ui.enabled', 'false').config('spark.jars.ivy', '/tmp/ivy').config('spark.jars.packages', '${SPARK_PACKAGES}').getOrCreate().stop()" \
    && printf '%s %s %s\n' \
        9c1ce986f548e6b1dcb0e2dfe2f253a0bc58f2232a32a0c9c6c674dd25a8570c org.apache.spark_spark-sql-kafka-0-10_2.13-4.1.1.jar spark-sql-kafka-0-10_2.13-4.1.1.jar \
        e510adc37b03d01d0a190d0dab472b5538e05eaa77454f7e9477156d7a6820ae org.apache.spark_spark-token-provider-kafka-0-10_2.13-4.1.1.jar spark-token-provider-kafka-0-10_2.13-4.1.1.jar \
        7568b998572d256f0b7bc0afdc1b7a2588b8b08415c62ce314c864a6851ae9d9 org.apache.kafka_kafka-clients-3.9.1.jar kafka-clients-3.9.1.jar \
        5273c8bc8c0dca2211175c0d27efbd7228efae99689aac001a8e1ef8e872e9ef org.apache.commons_commons-pool2-2.12.1.jar commons-pool2-2.12.1.jar \
        2a32a9dcbc42d67a50ad3a0de5efd102c8d2be46720045f2cbd6689f160ab7c7 org.postgresql_postgresql-42.7.8.jar postgresql-42.7.8.jar \
    | while read -r sum resolved name; do \
        echo "${sum}  /tmp/ivy/jars/${resolved}" | sha256sum -c - \
        && cp "/tmp/ivy/jars/${resolved}" "/opt/pipeline/state/jars/spark/${name}" || exit 1; \
      done \
    && rm -rf /tmp/ivy

# The code, so the image also runs without the repo mounted (docker-compose.yaml mounts it read-only on top).
# .dockerignore lets only dags/, plugins/, include/, spark/ and the two pin files into the build context.
COPY --chown=airflow:0 . /opt/airflow/
